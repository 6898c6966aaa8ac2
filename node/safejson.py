"""JSON from untrusted input: every failure is a ``JsonRefused`` with a message for the sender.

Python's ``json.loads`` fails in three ways a hostile document can choose: a ``JSONDecodeError``
(malformed), a plain ``ValueError`` for an integer longer than ``sys.get_int_max_str_digits()``
digits, and ``RecursionError`` for deep nesting, at a depth that depends on how deep the
caller's own stack already is. The nesting is therefore measured before parsing, in C-speed
passes over the bytes (``nesting_depth``), against a fixed limit, so the same document is
accepted or refused the same way wherever it is read (an HTTP handler, a gateway session, a
replica applying a Raft entry).
"""

from __future__ import annotations

import json
import re
import sys
from itertools import accumulate
from typing import Any

ABSOLUTE_MAX_DEPTH = 256
"""The deepest limit a caller may ask for: far enough below the interpreter's recursion limit
(1000) that parsing and re-encoding an accepted document never reach it."""

_SQUARE = bytes.maketrans(b"{}", b"[]")
_OPEN = ord("[")
_RUNS = re.compile(rb"\[+|\]+")
_LEAF_PASSES = 4
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


class JsonRefused(ValueError):
    """The document cannot be accepted; ``str(e)`` says why, in words for the sender."""


class JsonInvalid(JsonRefused):
    """Not JSON at all: bad syntax or bad text encoding."""


class JsonBeyondLimits(JsonRefused):
    """JSON, but nested too deep or with a number too long to convert."""


def nesting_depth(raw: bytes, cap: int | None = None) -> int:
    r"""The deepest nesting of arrays and objects in UTF-8 JSON text ``raw`` (0 for a scalar);
    with a ``cap``, any answer above ``cap`` means only "deeper than that".

    Refusing a document must cost less than parsing it, so the work is mostly bytes operations
    of C speed. Brackets inside strings do not count: the escapes that matter (``\\`` and
    ``\"``) are dropped, so that every ``"`` left delimits a string, and the strings go. ``{``
    and ``}`` then read as ``[`` and ``]``. A run of ``cap + 1`` opening brackets (the usual
    attack) settles it at once. Otherwise a few passes remove the innermost pairs (``[]``), each
    lowering the depth by exactly one and leaving fewer runs of brackets, and the highest
    running sum over the runs that remain is the rest of the depth. Unpaired brackets
    (malformed text) count as nesting, since the parser would descend into them first.
    """
    if b"[" not in raw and b"{" not in raw:
        return 0
    if b'"' in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
        raw = b"".join(raw.split(b'"')[::2])
    marks = raw.translate(_SQUARE, _NOT_BRACKET)
    if cap is not None and b"[" * (cap + 1) in marks:
        return cap + 1
    passes = 0
    while marks and passes < _LEAF_PASSES:
        inner = marks.replace(b"[]", b"")
        if len(inner) == len(marks):
            break
        marks, passes = inner, passes + 1
    steps = (len(run) if run[0] == _OPEN else -len(run) for run in _RUNS.findall(marks))
    return passes + max(accumulate(steps, initial=0))


def loads(data: bytes | str, max_depth: int) -> Any:
    """Parse ``data`` (bytes in any encoding ``json.loads`` accepts, or text), refusing a
    document nested deeper than ``max_depth``; raises ``JsonRefused`` for every failure."""
    if not 1 <= max_depth <= ABSOLUTE_MAX_DEPTH:
        raise ValueError(f"max_depth must be in 1..{ABSOLUTE_MAX_DEPTH}")
    if isinstance(data, str):
        text, encoding = data, "utf-8"
    else:
        encoding = json.detect_encoding(data)
        try:
            text = data.decode(encoding, "surrogatepass")
        except UnicodeDecodeError as e:
            raise JsonInvalid(f"not valid {encoding} text: {e.reason} at byte {e.start}") from None
    # Every bracket is one byte of UTF-8, so the counts bound the depth: the scan is needed only
    # for documents with many brackets.
    raw = data if isinstance(data, bytes) and encoding == "utf-8" else _utf8(text)
    if raw.count(b"[") + raw.count(b"{") > max_depth and nesting_depth(raw, max_depth) > max_depth:
        raise JsonBeyondLimits(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise JsonInvalid(f"not valid JSON: {e}") from None
    except RecursionError:
        # Not reached after the depth check; kept so that no input can escape as a crash.
        raise JsonBeyondLimits(f"JSON nested deeper than {max_depth} levels") from None
    except ValueError:
        # The one other ValueError json raises: int() of a too-long digit string.
        limit = sys.get_int_max_str_digits()
        raise JsonBeyondLimits(f"a number in the JSON has more than {limit} digits") from None


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")
