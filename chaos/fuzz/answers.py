"""Reading what the servers answer, per target: counts by kind (a CONNACK's or SENDACK's reason,
an HTTP status, an HTTP/2 frame type and error code, a WebSocket close code), and the server
errors worth a report entry (an HTTP 500, a SENDACK "system error", an HTTP/2 INTERNAL_ERROR)
kept as findings with the request that got them when it is known.

Each connection gets one accounter; ``feed`` takes the bytes as they arrive.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Protocol

from proto.wkproto import (
    Connack,
    Disconnect,
    FrameDecoder,
    Pong,
    ProtocolError,
    ReasonCode,
    Recv,
    Sendack,
)

from .ws import WsReader

EXAMPLE_BYTES = 600
"""A finding keeps this much of the request that caused it (hex for binary, text for HTTP)."""

H2_TYPES = {
    0: "DATA",
    1: "HEADERS",
    2: "PRIORITY",
    3: "RST_STREAM",
    4: "SETTINGS",
    5: "PUSH_PROMISE",
    6: "PING",
    7: "GOAWAY",
    8: "WINDOW_UPDATE",
    9: "CONTINUATION",
}
H2_ERRORS = {
    0: "NO_ERROR",
    1: "PROTOCOL_ERROR",
    2: "INTERNAL_ERROR",
    3: "FLOW_CONTROL_ERROR",
    5: "STREAM_CLOSED",
    6: "FRAME_SIZE_ERROR",
    7: "REFUSED_STREAM",
    8: "CANCEL",
    9: "COMPRESSION_ERROR",
    11: "ENHANCE_YOUR_CALM",
}


class Accounter(Protocol):
    counts: Counter[str]
    findings: list[dict[str, Any]]

    def feed(self, data: bytes) -> None: ...


def _reason(code: int) -> str:
    try:
        return ReasonCode(code).name
    except ValueError:
        return str(code)


class WkAnswers:
    """WKProto frames from the gateway (after the WebSocket layer, if any)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.findings: list[dict[str, Any]] = []
        self._decoder = FrameDecoder(version=3)
        self._broken = False

    def feed(self, data: bytes) -> None:
        if self._broken or not data:
            return
        self._decoder.feed(data)
        while True:
            try:
                f = self._decoder.next_frame()
            except ProtocolError:
                self.counts["undecodable"] += 1
                self._broken = True
                return
            if f is None:
                return
            if isinstance(f, Connack):
                self.counts[f"connack:{_reason(f.reason_code)}"] += 1
                # Frames after a CONNACK use the session's version (3 when it does not say).
                self._decoder.version = f.server_version or 3
            elif isinstance(f, Sendack):
                self.counts[f"sendack:{_reason(f.reason_code)}"] += 1
                if f.reason_code == ReasonCode.SYSTEM_ERROR:
                    self.findings.append(
                        {"kind": "sendack_system_error", "client_msg_no": f.client_msg_no}
                    )
            elif isinstance(f, Disconnect):
                self.counts[f"disconnect:{_reason(f.reason_code)}"] += 1
            elif isinstance(f, Pong):
                self.counts["pong"] += 1
            elif isinstance(f, Recv):
                self.counts["recv"] += 1
            else:
                self.counts[type(f).__name__.lower()] += 1


class WsAnswers:
    """The upgrade response, then WebSocket frames carrying WKProto."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.findings: list[dict[str, Any]] = []
        self._head = b""
        self._upgraded = False
        self._ws = WsReader()
        self._wk = WkAnswers()
        self._wk.counts = self.counts
        self._wk.findings = self.findings

    def feed(self, data: bytes) -> None:
        if not self._upgraded:
            self._head += data
            if b"\r\n\r\n" not in self._head:
                return
            head, _, data = self._head.partition(b"\r\n\r\n")
            status = head.split(b" ", 2)[1:2]
            self.counts[f"upgrade:{(status or [b'?'])[0].decode('latin-1')}"] += 1
            self._upgraded = True
            if not head.startswith(b"HTTP/1.1 101"):
                return
        for opcode, payload in self._ws.feed(data):
            if opcode in (0x0, 0x2):
                self._wk.feed(payload)
            elif opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.counts[f"ws_close:{code}"] += 1
            elif opcode == 0x9:
                self.counts["ws_ping"] += 1
            elif opcode == 0xA:
                self.counts["ws_pong"] += 1
            else:
                self.counts[f"ws_opcode:{opcode}"] += 1


class HttpAnswers:
    """HTTP/1.1 responses, paired in order with the requests the scenario wrote."""

    def __init__(self, sent: list[bytes]) -> None:
        self.counts: Counter[str] = Counter()
        self.findings: list[dict[str, Any]] = []
        self._sent = sent
        self._buf = b""
        self._index = 0

    def feed(self, data: bytes) -> None:
        self._buf += data
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buf[:end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    try:
                        length = int(value.strip())
                    except ValueError:
                        length = 0
            if len(self._buf) < end + 4 + length:
                return
            body = self._buf[end + 4 : end + 4 + length]
            self._buf = self._buf[end + 4 + length :]
            parts = head.split(b" ", 2)
            status = parts[1].decode("latin-1") if len(parts) > 1 else "?"
            self.counts[f"http:{status}"] += 1
            if status.startswith("5") and status != "503":
                request = self._sent[self._index] if self._index < len(self._sent) else b""
                self.findings.append(
                    {
                        "kind": f"http_{status}",
                        "request": request[:EXAMPLE_BYTES].decode("latin-1"),
                        "request_bytes": len(request),
                        "response": body[:300].decode("utf-8", "replace"),
                    }
                )
            self._index += 1


class H2Answers:
    """HTTP/2 frames from the gRPC server, by type; GOAWAY and RST_STREAM by error code."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.findings: list[dict[str, Any]] = []
        self._buf = b""

    def feed(self, data: bytes) -> None:
        self._buf += data
        while len(self._buf) >= 9:
            n = int.from_bytes(self._buf[:3], "big")
            if len(self._buf) < 9 + n:
                return
            ftype = self._buf[3]
            payload = self._buf[9 : 9 + n]
            self._buf = self._buf[9 + n :]
            name = H2_TYPES.get(ftype, str(ftype))
            self.counts[f"h2:{name}"] += 1
            code = None
            if ftype == 7 and len(payload) >= 8:
                code = int.from_bytes(payload[4:8], "big")
            elif ftype == 3 and len(payload) >= 4:
                code = int.from_bytes(payload[:4], "big")
            if code is not None:
                error = H2_ERRORS.get(code, str(code))
                self.counts[f"{name.lower()}:{error}"] += 1
                if code == 2:
                    self.findings.append({"kind": f"h2_{name.lower()}_internal_error"})


class ByteCount:
    """Raft ports: nothing is expected back from an unauthenticated peer; count what comes."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.findings: list[dict[str, Any]] = []

    def feed(self, data: bytes) -> None:
        self.counts["bytes_received"] += len(data)


def accounter_for(target: str, sent: list[bytes]) -> Accounter:
    if target == "tcp":
        return WkAnswers()
    if target == "ws":
        return WsAnswers()
    if target == "http":
        return HttpAnswers(sent)
    if target == "grpc":
        return H2Answers()
    return ByteCount()
