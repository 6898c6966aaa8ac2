"""What ``raftchat chat`` and ``raftchat tail`` do (their options: ``client.cli_chat``).

``chat`` on a terminal edits the line being typed while messages and status lines are printed
above it (``client.lineinput``); from a pipe it sends each line as it comes. Lines go through
an outbox (``client.outbox``) that keeps them, in order, while the session is away. Messages
are printed one a line as ``[seq] from: text``, the payload rendered by
``client.payloads.describe``. Status lines (``# ...``, ``! ...`` for problems) go to standard
error, so that standard output holds only messages and can be piped.

How ``chat`` ends, and its exit code: the input's end (Ctrl-D, or the pipe closing) once every
queued line is sent, and SIGTERM: 0; Ctrl-C (the key, or SIGINT): 130, the shell's convention
for an interrupted command; the session giving up (wrong token, kicked) or a failed start: 1.
Each prints one goodbye line and no traceback.
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Literal

import trio

from proto.wkproto import ChannelType

from .credentials import api_token
from .defaults import DEFAULT_HTTP_URL, DEFAULT_TCP_ADDR
from .errors import ClientError, SendRefused
from .http import HttpClient
from .lineinput import PipeInput, PromptInput
from .models import Message
from .outbox import Outbox, Outgoing, send_queued
from .payloads import describe, safe
from .session import ConnectionState, Session, open_session

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130

Ending = Literal["eof", "interrupt", "terminated"]


def format_message(m: Message, chat: tuple[str, int] | None = None) -> str:
    where = "" if chat is None or m.channel == chat else f"({m.channel_id}/{m.channel_type}) "
    text = "(revoked)" if m.revoked else describe(m.payload) + (" (edited)" if m.edited else "")
    return safe(f"{where}[{m.message_seq}] {m.from_uid or 'system'}: ") + text


def _say(line: str) -> None:
    print(line, flush=True)


def _note(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _plural(n: int, what: str) -> str:
    return f"{n:,} {what}" if n == 1 else f"{n:,} {what}s"


def reason(error: BaseException | None) -> str:
    """Why a connection ended or an attempt failed, in a few words."""
    if error is None:
        return "no reason given"
    if isinstance(error, trio.TooSlowError):
        return "timed out"
    if isinstance(error, OSError):
        # trio's "all attempts to connect ... failed" holds each attempt's error as its cause.
        causes = _leaves(error.__cause__) if error.__cause__ is not None else []
        for e in [error, *causes]:
            if isinstance(e, OSError) and e.errno:
                return os.strerror(e.errno)
    return str(error) or type(error).__name__


class ConnectionNotes:
    """The status lines of a session's connection, from its ``ConnectionState`` changes.

    Repeats are left out: while the session keeps failing to reach the same node the same
    way, the line was said already (``prompt`` still shows the state). Everything is said
    again after the next successful login."""

    def __init__(self) -> None:
        self.node = ""
        """The node of the last login, as said: ``node 2`` (``host:port`` from a server that
        sends no node id)."""
        self.state: ConnectionState | None = None
        self._said: set[tuple[object, ...]] = set()
        self._logins = 0

    def lines(self, state: ConnectionState, queued: int) -> list[str]:
        self.state = state
        where = f"{state.address[0]}:{state.address[1]}"
        waiting = f"; {_plural(queued, 'line')} queued" if queued else ""
        if state.phase == "connected":
            self.node = f"node {state.node_id}" if state.node_id else where
            self._said.clear()
            self._logins += 1
            first = self._logins == 1
            sending = f"; sending {_plural(queued, 'queued line')}" if queued and not first else ""
            at = f"node {state.node_id} ({where})" if state.node_id else where
            return [f"# connected to {at}{sending}"]
        if state.phase == "connecting":
            key: tuple[object, ...] = ("connecting", state.address)
            line = f"# connecting to {where}"
        elif state.phase == "retrying":
            why = reason(state.error)
            key = ("retrying", state.address, why, state.was_connected)
            if state.was_connected:
                line = f"# disconnected from {self.node} ({why})"
            else:
                line = f"# cannot connect to {where} ({why})"
            line += f", retrying in {state.retry_in_s:.1f} s{waiting}"
        else:
            return []  # the session gave up: the chat ends with that error
        if key in self._said:
            return []
        self._said.add(key)
        return [line]


class Chat:
    """One ``raftchat chat``: its session, outbox, input and what it prints."""

    def __init__(self, uid: str, channel: tuple[str, int], interactive: bool) -> None:
        self.uid = uid
        self.channel = channel
        self.outbox = Outbox()
        self.notes = ConnectionNotes()
        self.input: PromptInput | PipeInput = (
            PromptInput(self.prompt) if interactive else PipeInput()
        )
        self.session: Session | None = None

    @property
    def connected(self) -> bool:
        return self.session is not None and self.session.connected

    def prompt(self) -> str:
        if self.connected:
            return f"{self.uid}> "
        queued = len(self.outbox)
        return f"{self.uid} (offline, {queued} queued)> " if queued else f"{self.uid} (offline)> "

    def on_state(self, state: ConnectionState) -> None:
        for line in self.notes.lines(state, len(self.outbox)):
            _note(line)
        self.input.refresh()

    def on_line(self, text: str) -> None:
        if not text.strip():
            return
        queued = self.outbox.put(text)
        if queued is None:
            _note(
                f"! not sent: {_plural(len(self.outbox), 'line')} are already waiting"
                " to be sent; try again once connected"
            )
        elif not self.connected:
            _note(f"# queued until connected ({_plural(len(self.outbox), 'line')} waiting)")
        self.input.refresh()

    def on_refused(self, line: Outgoing, error: SendRefused) -> None:
        code = error.reason_code
        name = getattr(code, "name", str(code))
        _note(f"! not sent ({name}): {safe(line.text[:60])}")

    async def show_messages(self, session: Session) -> None:
        async for m in session:
            _say(format_message(m, self.channel))

    async def converse(self, session: Session) -> Ending:
        """Until the input ends (and, at its end, the outbox is empty) or Ctrl-C."""
        self.session = session
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.show_messages, session)
            nursery.start_soon(send_queued, session, self.channel, self.outbox, self.on_refused)
            end = await self.input.run(self.on_line)
            if end == "eof" and len(self.outbox):
                _note(
                    f"# sending {_plural(len(self.outbox), 'queued line')} before quitting"
                    " (Ctrl-C quits without them)"
                )
                await self.outbox.wait_empty()
            nursery.cancel_scope.cancel()
        return end

    def goodbye(self, ending: Ending) -> str:
        left = len(self.outbox)
        unsent = f"; {_plural(left, 'queued line')} not sent" if left else ""
        how = {"eof": "", "interrupt": " (interrupted)", "terminated": " (terminated)"}[ending]
        return f"# bye{how}{unsent}"


def run_chat(args: argparse.Namespace) -> int:
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    channel = (args.to, int(ChannelType.GROUP if args.group else ChannelType.PERSON))
    chat = Chat(args.uid, channel, interactive)
    _tolerate_unencodable_output()
    with chat.input.printing():
        ending, error = _run(lambda: _chat(args, chat))
    # Printed once the editor has given the terminal back.
    if error is not None:
        _note(f"raftchat chat: {error}")
        return EXIT_ERROR
    _note(chat.goodbye(ending))
    return EXIT_INTERRUPTED if ending == "interrupt" else EXIT_OK


def _http(args: argparse.Namespace) -> HttpClient:
    """The HTTP API of ``--http`` (or the dev cluster's), with the API token
    (``client/credentials.py``)."""
    token = api_token(args.api_token, default_target=not args.http)
    return HttpClient(args.http or [DEFAULT_HTTP_URL], api_token=token)


async def _chat(args: argparse.Namespace, chat: Chat) -> Ending:
    async with _http(args) as http:
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
            on_state=chat.on_state,
        ) as session:
            # From the channel's head: what is new is shown, and caught up after reconnects.
            await session.follow(*chat.channel)
            _note(
                f"# {safe(args.uid)} chatting with {safe(args.to)}: Enter sends a line,"
                " Ctrl-D or Ctrl-C quits"
            )
            return await chat.converse(session)


def _run(main: Callable[[], Awaitable[Ending | None]]) -> tuple[Ending, ClientError | None]:
    """Run ``main`` under trio, SIGINT and SIGTERM stopping it cleanly: how it ended, and the
    client error that ended it, if one did."""
    endings: list[Ending] = []

    async def guarded() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    async for signum in signals:
                        endings.append("interrupt" if signum == signal.SIGINT else "terminated")
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(watch)
                endings.append(await main() or "eof")
                nursery.cancel_scope.cancel()

    try:
        trio.run(guarded)
    except BaseException as e:
        leaves = _leaves(e)
        errors = [x for x in leaves if isinstance(x, ClientError)]
        if errors:
            return "eof", errors[0]
        if not all(isinstance(x, KeyboardInterrupt) for x in leaves):
            raise
        # SIGINT before the signal receiver was in place, or after it was gone.
        endings.append("interrupt")
    return endings[0], None


def _leaves(e: BaseException) -> list[BaseException]:
    """The exceptions in ``e`` and its nested groups (trio nurseries wrap each in a group)."""
    if isinstance(e, BaseExceptionGroup):
        return [leaf for inner in e.exceptions for leaf in _leaves(inner)]
    return [e]


def _tolerate_unencodable_output() -> None:
    # Text from others may hold characters a non-UTF-8 terminal cannot show: escape them
    # rather than fail on them.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")


def run_tail(args: argparse.Namespace) -> int:
    _tolerate_unencodable_output()
    ending, error = _run(lambda: _tail(args))
    if error is not None:
        _note(f"raftchat tail: {error}")
        return EXIT_ERROR
    return EXIT_INTERRUPTED if ending == "interrupt" else EXIT_OK


async def _tail(args: argparse.Namespace) -> None:
    cursor = args.from_seq
    async with _http(args) as http:
        while True:
            async for m in http.iter_messages(args.login_uid, args.channel, args.type, cursor):
                _say(format_message(m))
                cursor = m.message_seq + 1
            if args.once:
                return
            await trio.sleep(args.interval)
