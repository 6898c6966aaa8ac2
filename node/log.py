"""Structured logs: every line carries the node id, and where known the connection and uid.

Use ``get_logger(component).info("event text", conn=..., uid=...)``; the keyword fields become
JSON members (or ``key=value`` pairs in text format).
"""

from __future__ import annotations

import atexit
import json
import logging
import sys
import time
from typing import Any, TextIO

from cluster.ratelog import RateLimitedLog

from .native_stderr import Record, StderrCapture

_node_id = 0


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "node": _node_id,
            "component": record.name.removeprefix("raftchat."),
            "msg": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = " ".join(f"{k}={v}" for k, v in getattr(record, "fields", {}).items())
        line = (
            f"{stamp} {record.levelname[0]} n{_node_id} "
            f"{record.name.removeprefix('raftchat.')}: {record.getMessage()} {fields}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line.rstrip()


class Logger:
    """A thin wrapper that turns keyword arguments into structured fields."""

    __slots__ = ("_log",)

    def __init__(self, log: logging.Logger) -> None:
        self._log = log

    def _emit(self, level: int, msg: str, exc: bool, fields: dict[str, Any]) -> None:
        if self._log.isEnabledFor(level):
            self._log.log(level, msg, exc_info=exc, extra={"fields": fields}, stacklevel=3)

    def debug(self, msg: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, msg, False, fields)

    def info(self, msg: str, **fields: Any) -> None:
        self._emit(logging.INFO, msg, False, fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self._emit(logging.WARNING, msg, False, fields)

    def error(self, msg: str, **fields: Any) -> None:
        self._emit(logging.ERROR, msg, False, fields)

    def exception(self, msg: str, **fields: Any) -> None:
        self._emit(logging.ERROR, msg, True, fields)


def get_logger(component: str) -> Logger:
    return Logger(logging.getLogger(f"raftchat.{component}"))


class _QuietHandler(logging.StreamHandler[TextIO]):
    """A handler whose write errors go nowhere: with fd 2 captured, Python's report of a failed
    write would itself go through the capture into this handler again, without end."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


_capture: StderrCapture | None = None


GRPC_LINES = RateLimitedLog(logging.getLogger("raftchat.grpc"), 10.0)
"""grpc's C core logs a line per bad request it refuses (a malformed ``grpc-timeout`` header,
say): what a peer sends at will must not turn into log volume. At most one line per source
position every 10 s, then a count of the rest."""


def _emit_native(record: Record) -> None:
    logger = logging.getLogger(f"raftchat.{record.component}")
    if not logger.isEnabledFor(record.level):
        return
    if record.component == "grpc":
        key = str(record.fields.get("source") or record.msg)
        GRPC_LINES.log(record.level, key, record.msg, **record.fields)
        return
    logger.log(record.level, record.msg, extra={"fields": record.fields})


def setup_logging(
    node_id: int, level: str = "info", fmt: str = "json", whole_process: bool = False
) -> None:
    """Log raftchat's records to stderr in ``fmt``.

    ``whole_process`` (a node process): libraries' records too, and in JSON format whatever is
    written to fd 2 by other means, grpc's C core above all (``node/native_stderr.py``), so that
    every line of the log is JSON."""
    global _node_id, _capture
    _node_id = node_id
    handler: logging.StreamHandler[TextIO] = logging.StreamHandler(sys.stderr)
    if whole_process and fmt == "json" and _capture is None:
        _capture = StderrCapture(_emit_native, GRPC_LINES.flush)
        atexit.register(close_stderr_capture)
        handler = _QuietHandler(_capture.original)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger("raftchat")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    if whole_process:
        # Libraries' own loggers (grpc's Python side: "grpc._server", "grpc._channel";
        # pysyncobj) would reach Python's last-resort handler, which writes bare text: the same
        # handler, warnings and above, with the logger's name as the component.
        libraries = logging.getLogger()
        libraries.handlers[:] = [handler]
        libraries.setLevel(logging.WARNING)


def announce(text: str, level: int = logging.INFO) -> None:
    """One of the node's own lines about its start or end (``raftchat: node stopped``, a
    start-up refusal): a plain line on stderr, or, with stderr captured (JSON format), a record
    at ``level``."""
    if _capture is None:
        print(f"raftchat: {text}", file=sys.stderr, flush=True)
    else:
        logging.getLogger("raftchat.node").log(level, text, extra={"fields": {}})


def close_stderr_capture() -> None:
    """Hand fd 2 back and log what is still in the pipe (at exit, also a forced one)."""
    global _capture
    if _capture is not None:
        capture, _capture = _capture, None
        capture.close()
        GRPC_LINES.close()  # the counts of the last interval
