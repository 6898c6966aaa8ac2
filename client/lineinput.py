"""Where ``raftchat chat`` reads its lines: a terminal or a pipe.

On a terminal, ``PromptInput`` edits the line with prompt_toolkit, which keeps the prompt and
what is being typed on the last line while other output is printed above it (everything
written to ``sys.stdout`` and ``sys.stderr`` inside ``PromptInput.printing()``). prompt_toolkit
runs on asyncio and the client on trio, so the editor runs in a thread of its own with its own
asyncio loop; typed lines are handed to trio with ``trio.from_thread``. From a pipe,
``PipeInput`` reads lines as they come, with no prompt and no redraw.

``run`` returns how the input ended: ``"eof"`` (Ctrl-D on an empty line, or the pipe's end)
or ``"interrupt"`` (Ctrl-C typed in the editor, where the terminal delivers it as a key, not
as SIGINT). Cancelling ``run`` gives the terminal back in its normal mode before it returns.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Literal

import trio

InputEnd = Literal["eof", "interrupt"]

STOP_WAIT_S = 5.0
"""How long a cancelled ``PromptInput.run`` waits for the editor to restore the terminal."""


class PipeInput:
    """Lines of standard input, without prompt or echo: for pipes and scripts."""

    @contextmanager
    def printing(self) -> Iterator[None]:
        yield

    def refresh(self) -> None:
        """Nothing to redraw."""

    async def run(self, on_line: Callable[[str], None]) -> InputEnd:
        while True:
            # A blocked read cannot be interrupted; the thread is left behind on cancel (the
            # process is about to end).
            line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            if not line:
                return "eof"
            on_line(line.rstrip("\r\n"))


class PromptInput:
    """A line editor on the terminal (prompt_toolkit) with ``prompt()`` as its prompt,
    evaluated at every redraw (``refresh`` asks for one)."""

    def __init__(self, prompt: Callable[[], str]) -> None:
        self._prompt = prompt
        self._lock = threading.Lock()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[InputEnd] | None = None
        self._invalidate: Callable[[], None] | None = None
        self._finished = threading.Event()

    @contextmanager
    def printing(self) -> Iterator[None]:
        """Route ``sys.stdout`` and ``sys.stderr`` above the prompt while inside."""
        from prompt_toolkit.patch_stdout import patch_stdout

        with patch_stdout():
            yield

    def refresh(self) -> None:
        """Redraw the prompt (its text may have changed). Safe from any thread."""
        with self._lock:
            loop, invalidate = self._loop, self._invalidate
        if loop is not None and invalidate is not None:
            # RuntimeError: the editor's loop has just closed, nothing is left to redraw.
            with suppress(RuntimeError):
                loop.call_soon_threadsafe(invalidate)

    async def run(self, on_line: Callable[[str], None]) -> InputEnd:
        token = trio.lowlevel.current_trio_token()
        try:
            return await trio.to_thread.run_sync(
                self._thread, token, on_line, abandon_on_cancel=True
            )
        finally:
            if not self._finished.is_set():
                self._stop()
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self._finished.wait, STOP_WAIT_S)

    def _thread(self, token: trio.lowlevel.TrioToken, on_line: Callable[[str], None]) -> InputEnd:
        try:
            return asyncio.run(self._edit(token, on_line))
        finally:
            self._finished.set()

    async def _edit(
        self, token: trio.lowlevel.TrioToken, on_line: Callable[[str], None]
    ) -> InputEnd:
        from prompt_toolkit import PromptSession

        session: PromptSession[str] = PromptSession()

        def invalidate() -> None:
            if session.app.is_running:
                session.app.invalidate()

        with self._lock:
            if self._stopping:
                return "eof"
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            self._invalidate = invalidate
        try:
            while True:
                try:
                    line = await session.prompt_async(self._prompt)
                except EOFError:
                    return "eof"
                except KeyboardInterrupt:
                    return "interrupt"
                trio.from_thread.run_sync(on_line, line, trio_token=token)
        except asyncio.CancelledError:
            return "eof"  # stopped by ``run`` being cancelled: the caller has moved on
        finally:
            with self._lock:
                self._loop = self._task = self._invalidate = None

    def _stop(self) -> None:
        with self._lock:
            self._stopping = True
            loop, task = self._loop, self._task
        if loop is not None and task is not None:
            # RuntimeError: the loop closed meanwhile, the editor is done.
            with suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)
