"""CPU per peer message of three gRPC shapes, grpc.aio alone, between two processes.

``python -m bench.grpc_shapes``: a unary call per message, a message and its answer on one
bidirectional stream, and a one-way message on a stream (answered once at the end). One message
at a time, with a 2 ms pause between messages as at a light load, so the figures are a lone
message's cost, set-up and wake-ups included; the pause's own timer cost is in the client's
figure for every shape alike. CPU is each process's own (client: ``time.process_time``, server:
``/proc``), so other load on the machine counts less than in wall time. This is the measurement
behind ADR 026 (long-lived peer streams); it uses no raftchat code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

import grpc

BODY = b"x" * 600  # about a delivery batch of one small message
SERVICE = "bench.Shapes"


def _same(b: bytes) -> bytes:
    return b


async def _serve(port: int) -> None:
    async def unary(req: bytes, _ctx: object) -> bytes:
        return req

    async def stream(requests: object, _ctx: object) -> object:
        async for req in requests:  # type: ignore[attr-defined]
            if req[:1] == b"r":  # answered; the one-way shape marks only its last message
                yield req

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "U": grpc.unary_unary_rpc_method_handler(unary, _same, _same),
            "S": grpc.stream_stream_rpc_method_handler(stream, _same, _same),
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


async def _client(port: int, shape: str, n: int) -> float:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    await channel.channel_ready()
    unary = channel.unary_unary(f"/{SERVICE}/U", _same, _same)
    call = channel.stream_stream(f"/{SERVICE}/S", _same, _same)()
    for _ in range(100):  # warm both paths
        await unary(BODY)
        await call.write(b"r" + BODY)
        await call.read()
    start = time.process_time()
    for _ in range(n):
        if shape == "unary":
            await unary(BODY, timeout=5)
        elif shape == "round trip":
            await call.write(b"r" + BODY)
            await call.read()
        else:
            await call.write(BODY)
        await asyncio.sleep(0.002)
    if shape == "one-way":
        await call.write(b"r")
        await call.read()
    spent = time.process_time() - start
    await channel.close()
    return spent


def _ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def measure(shape: str, n: int, port: int) -> dict[str, float]:
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.grpc_shapes", "--serve", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        before = _ticks(server.pid)
        client_s = asyncio.run(_client(port, shape, n))
        server_s = (_ticks(server.pid) - before) / os.sysconf("SC_CLK_TCK")
    finally:
        server.kill()
        server.wait()
    return {
        "client_us": round(client_s / n * 1e6),
        "server_us": round(server_s / n * 1e6),
        "total_us": round((client_s + server_s) / n * 1e6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--port", type=int, default=27111)
    parser.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve))
        return
    results = {}
    for shape in ("unary", "round trip", "one-way"):
        results[shape] = measure(shape, args.messages, args.port)
        row = results[shape]
        print(
            f"{shape:<11} client {row['client_us']:>5} µs  server {row['server_us']:>5} µs  "
            f"total {row['total_us']:>5} µs per message",
            flush=True,
        )
    print("RAFTCHAT_GRPC_SHAPES " + json.dumps(results))


if __name__ == "__main__":
    main()
