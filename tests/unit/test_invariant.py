"""invariant(): raises with the details, and survives python -O."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cluster.invariant import InvariantViolation, invariant


def test_a_false_condition_raises_with_its_details() -> None:
    invariant(True, "never shown")
    with pytest.raises(InvariantViolation, match="ids increase: 5, 4"):
        invariant(4 > 5, "ids increase", 5, 4)
    with pytest.raises(AssertionError, match=r"^plain$"):
        invariant(False, "plain")


def test_python_dash_o_keeps_the_check() -> None:
    code = (
        "from cluster.invariant import invariant, InvariantViolation\n"
        "assert False, 'stripped'\n"
        "try:\n    invariant(False, 'kept')\nexcept InvariantViolation as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "kept"
