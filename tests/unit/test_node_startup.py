"""Start-up failures inside the node: a listener that loses the race for its port after the
address check, and the one StartupError found in trio's nested exception groups."""

from __future__ import annotations

import os
import socket
from functools import partial

import pytest
import trio

from cluster.listen import ListenError, start_listener
from node.startup import refused, startup_error_in

HOST = "127.0.89.20"
PORT = 21_000 + os.getpid() % 1000


async def _ignore(stream: trio.SocketStream) -> None:
    pass


def test_a_listener_whose_port_was_taken_meanwhile_names_it_in_one_line() -> None:
    async def main() -> None:
        with socket.socket() as holder:
            holder.bind((HOST, PORT))
            holder.listen()
            async with trio.open_nursery() as nursery:
                serve = partial(trio.serve_tcp, _ignore, PORT, host=HOST)
                with pytest.raises(ListenError) as caught:
                    await start_listener(nursery, "WKProto TCP", HOST, PORT, serve)
                nursery.cancel_scope.cancel()
        assert str(caught.value) == (
            f"cannot listen on {HOST}:{PORT} (WKProto TCP): Address already in use"
        )

    trio.run(main)


def test_the_startup_error_is_found_in_nested_exception_groups() -> None:
    error = refused("no")
    nested = BaseExceptionGroup("outer", [ValueError("x"), ExceptionGroup("inner", [error])])
    assert startup_error_in(nested) is error
    assert startup_error_in(ExceptionGroup("other", [ValueError("x")])) is None
