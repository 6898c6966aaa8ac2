"""CPU per message of the two client codecs, JSON-RPC and WKProto, on a typical chat message.

``python -m bench.codecs``: a SEND decoded and a RECV encoded by each codec, the best of seven
runs of 20,000, in process CPU time (so that other processes on the machine count less).
"""

from __future__ import annotations

import base64
import json
import time
import timeit
from collections.abc import Callable

from proto.jsonrpc import JsonRpcCodec
from proto.wkproto import FrameDecoder, Recv, Send, encode

PAYLOAD = b'{"type":1,"content":"hello there, how are you doing today? a typical chat line"}'
UUID = "0b7e4c1a-2f3d-4e5f-8a9b-1c2d3e4f5a6b"
RUNS, NUMBER = 7, 20_000


def _send_request(payload: object) -> str:
    params = {"clientMsgNo": UUID, "channelId": "bob", "channelType": 1, "payload": payload}
    params["header"] = {"redDot": True}
    return json.dumps({"jsonrpc": "2.0", "method": "send", "id": UUID, "params": params})


def _recv(payload: bytes) -> Recv:
    return Recv(
        setting=0,
        msg_key="",
        from_uid="alice",
        channel_id="alice",
        channel_type=1,
        client_msg_no=UUID,
        message_id=123456789012345678,
        message_seq=42,
        timestamp=1_700_000_000,
        payload=payload,
        flags=2,
    )


def cases() -> list[tuple[str, Callable[[], object]]]:
    codec = JsonRpcCodec()
    codec.feed('{"method":"connect","id":"c","params":{"uid":"alice"}}')
    codec.next_frame()

    def decode_json(message: str) -> Callable[[], object]:
        def run() -> object:
            codec.feed(message)
            return codec.next_frame()

        return run

    wire = encode(Send(0, 1, UUID, "bob", 1, PAYLOAD, flags=2), 6)
    decoder = FrameDecoder(6)

    def decode_wkproto() -> object:
        decoder.feed(wire)
        return decoder.next_frame()

    as_object = _send_request(json.loads(PAYLOAD))
    as_base64 = _send_request(base64.b64encode(PAYLOAD).decode())
    json_recv, binary_recv = _recv(PAYLOAD), _recv(bytes(range(len(PAYLOAD))))
    return [
        ("JSON-RPC decode send, payload an object", decode_json(as_object)),
        ("JSON-RPC decode send, payload base64", decode_json(as_base64)),
        ("JSON-RPC encode recv, JSON payload (an object)", lambda: codec.encode(json_recv)),
        ("JSON-RPC encode recv, binary payload (base64)", lambda: codec.encode(binary_recv)),
        ("WKProto decode SEND", decode_wkproto),
        ("WKProto encode RECV", lambda: encode(json_recv, 6)),
    ]


def main() -> None:
    for name, fn in cases():
        best = min(timeit.repeat(fn, number=NUMBER, repeat=RUNS, timer=time.process_time))
        print(f"{name}: {best / NUMBER * 1e6:.1f} us")


if __name__ == "__main__":
    main()
