"""Structured logging: JSON and text lines carry node id, component, message and fields."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

import node.log as log_mod
from node.log import get_logger, setup_logging


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    """Capture what ``setup_logging`` configures, then restore the global logging state."""
    root = logging.getLogger("raftchat")
    saved = (root.handlers[:], root.level, root.propagate, log_mod._node_id)
    buf = io.StringIO()
    try:
        yield buf
    finally:
        root.handlers[:], root.level, root.propagate, log_mod._node_id = saved


def configure(buf: io.StringIO, node_id: int, level: str, fmt: str) -> None:
    setup_logging(node_id, level, fmt)
    handler = logging.getLogger("raftchat").handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buf)


def lines(buf: io.StringIO) -> list[str]:
    return [ln for ln in buf.getvalue().splitlines() if ln]


def test_json_line_has_node_component_and_fields(out: io.StringIO) -> None:
    configure(out, 7, "info", "json")
    get_logger("pipeline").info("batch committed", conn=5, uid="u1", size=3)
    (line,) = lines(out)
    data = json.loads(line)
    assert data["node"] == 7
    assert data["component"] == "pipeline"
    assert data["level"] == "info"
    assert data["msg"] == "batch committed"
    assert (data["conn"], data["uid"], data["size"]) == (5, "u1", 3)
    assert isinstance(data["ts"], float)


def test_json_line_with_an_exception_and_unserialisable_fields(out: io.StringIO) -> None:
    configure(out, 1, "info", "json")
    try:
        raise RuntimeError("disk on fire")
    except RuntimeError:
        get_logger("http").exception("handler failed", path="/x", raw=b"\x00", obj=object())
    (line, *rest) = lines(out)
    assert rest == []  # the traceback is inside the one JSON line
    data = json.loads(line)
    assert data["level"] == "error"
    assert "RuntimeError: disk on fire" in data["exc"]
    assert data["raw"] == str(b"\x00")
    assert data["obj"].startswith("<object object")


def test_level_filtering(out: io.StringIO) -> None:
    configure(out, 1, "warning", "json")
    log = get_logger("gateway")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert [json.loads(ln)["msg"] for ln in lines(out)] == ["w", "e"]


def test_text_format(out: io.StringIO) -> None:
    configure(out, 3, "debug", "text")
    get_logger("gateway").debug("connected", conn=9, uid="alice")
    (line,) = lines(out)
    assert line.endswith("D n3 gateway: connected conn=9 uid=alice")
    get_logger("gateway").info("no fields")
    assert lines(out)[1].endswith("I n3 gateway: no fields")  # no trailing blank


def test_setup_does_not_stack_handlers(out: io.StringIO) -> None:
    configure(out, 1, "info", "json")
    configure(out, 1, "info", "json")
    get_logger("x").info("once")
    assert len(lines(out)) == 1
