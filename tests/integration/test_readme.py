"""The README's shell examples, as written, against a real node with the credentials that
``make run`` makes: the token files in ``data/`` and node 1's address 127.0.0.1:5001 (here
the test node's address, substituted). A command must succeed and print what its ``# ...``
comment says it prints."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.devcluster import NodeProcess
from node.dev import ADMIN_TOKEN_FILE, API_TOKEN_FILE, dev_tokens, usage
from tests.conftest import start_node

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DEV_HTTP = "http://127.0.0.1:5001"


def shell_examples() -> list[str]:
    """The lines of the README's ``sh`` block that uses the running cluster."""
    text = README.read_text()
    blocks = re.findall(r"^```sh\n(.*?)^```$", text, re.S | re.M)
    lines = [line for b in blocks for line in b.splitlines() if DEV_HTTP in line]
    assert lines, "the README shows no command against the local cluster"
    return lines


@pytest.fixture(scope="module")
def dev_like(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, Path]]:
    """A node run with the tokens ``raftchat dev`` makes, and a directory whose ``data/``
    holds them as ``make run`` leaves them."""
    cwd = tmp_path_factory.mktemp("readme")
    tokens = dev_tokens(cwd / "data")
    node = start_node(
        cwd,
        auth__api_token=tokens["RAFTCHAT_AUTH_API_TOKEN"],
        auth__admin_token=tokens["RAFTCHAT_AUTH_ADMIN_TOKEN"],
    )
    try:
        yield node, cwd
    finally:
        node.stop()


@pytest.mark.parametrize("index", range(len(shell_examples())))
def test_readme_command_works_as_written(index: int, dev_like: tuple[NodeProcess, Path]) -> None:
    node, cwd = dev_like
    line = shell_examples()[index]
    command, _, comment = line.partition("   #")
    command = command.replace(DEV_HTTP, node.endpoints["http"]).strip()
    done = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command} --fail-with-body --silent --show-error"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, (line, done.stdout, done.stderr)
    if comment.strip().startswith("{"):
        assert json.loads(done.stdout) == json.loads(comment.strip()), line


def test_the_dev_tokens_are_kept_private_and_stable(tmp_path: Path) -> None:
    root = tmp_path / "data"
    first = dev_tokens(root)
    assert dev_tokens(root) == first  # a restarted dev cluster keeps its credentials
    for name in (API_TOKEN_FILE, ADMIN_TOKEN_FILE):
        assert (root / name).stat().st_mode & 0o777 == 0o600
    assert first["RAFTCHAT_AUTH_API_TOKEN"] != first["RAFTCHAT_AUTH_ADMIN_TOKEN"]
    text = usage("./data", first)
    # What `make run` prints uses the files the README's examples read.
    assert 'curl -H "token: $(cat ./data/api.token)"' in text
    assert first["RAFTCHAT_AUTH_ADMIN_TOKEN"] in text
