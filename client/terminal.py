"""What ``raftchat chat`` and ``raftchat tail`` do (their options: ``client.cli_chat``)."""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from proto.wkproto import ChannelType

from .defaults import DEFAULT_HTTP_URL, DEFAULT_TCP_ADDR
from .errors import ClientError
from .http import HttpClient
from .models import Message
from .session import Session, open_session


def format_message(m: Message, chat: tuple[str, int] | None = None) -> str:
    where = "" if chat is None or m.channel == chat else f"({m.channel_id}/{m.channel_type}) "
    text = "(revoked)" if m.revoked else m.text
    return f"{where}[{m.message_seq}] {m.from_uid or 'system'}: {text}"


def _say(line: str) -> None:
    print(line, flush=True)


def _note(line: str) -> None:
    # Status lines go to stderr, so that stdout holds only messages (and can be piped).
    print(line, file=sys.stderr, flush=True)


def _run(command: str, main: Callable[[argparse.Namespace], Awaitable[None]], args: Any) -> int:
    try:
        trio.run(main, args)
    except ClientError as e:
        _note(f"raftchat {command}: {e}")
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def run_chat(args: argparse.Namespace) -> int:
    return _run("chat", _chat, args)


async def _chat(args: argparse.Namespace) -> None:
    channel = (args.to, int(ChannelType.GROUP if args.group else ChannelType.PERSON))
    async with HttpClient(args.http or [DEFAULT_HTTP_URL]) as http:
        token = args.token
        if token is None:
            token = secrets.token_urlsafe(16)
            await http.user_token(args.uid, token)
        async with open_session(
            args.node or [DEFAULT_TCP_ADDR],
            uid=args.uid,
            token=token,
            http=http,
            transport="ws" if args.ws else "tcp",
        ) as session:
            # From the channel's head: what is new is shown, and caught up after reconnects.
            await session.follow(*channel)
            _note(f"# {args.uid} connected, chatting with {args.to}; Ctrl-D ends")
            async with trio.open_nursery() as nursery:

                async def show() -> None:
                    async for m in session:
                        _say(format_message(m, channel))

                nursery.start_soon(show)
                await _send_lines(session, channel)
                nursery.cancel_scope.cancel()


async def _send_lines(session: Session, channel: tuple[str, int]) -> None:
    """Send stdin's lines until it ends; a refused send is reported, not fatal."""
    while True:
        line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        if not line:
            return
        text = line.rstrip("\n")
        if not text:
            continue
        try:
            await session.send(*channel, text.encode())
        except ClientError as e:
            _note(f"! not sent: {e}")
        except trio.TooSlowError:
            _note("! not sent: no answer in time")


def run_tail(args: argparse.Namespace) -> int:
    return _run("tail", _tail, args)


async def _tail(args: argparse.Namespace) -> None:
    cursor = args.from_seq
    async with HttpClient(args.http or [DEFAULT_HTTP_URL]) as http:
        while True:
            async for m in http.iter_messages(args.login_uid, args.channel, args.type, cursor):
                _say(format_message(m))
                cursor = m.message_seq + 1
            if args.once:
                return
            await trio.sleep(args.interval)
