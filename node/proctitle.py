"""The node's process title: ``raftchat node <id> <host>`` in ``ps``, ``top`` and
``/proc/<pid>/cmdline``, so that an operator finds node 2 without matching ports to PIDs; and a
name for every thread in ``/proc/<pid>/task/<tid>/comm`` (``top -H``, ``py-spy``, the bench's
CPU per thread), so that CPU can be charged to the part of the node that spent it."""

from __future__ import annotations

import contextlib
import sys
import threading
import weakref
from types import FrameType
from typing import Any

from setproctitle import setproctitle

_COMM_BYTES = 15  # the kernel keeps 15 bytes of a thread name


def node_title(node_id: int, host: str) -> str:
    return f"raftchat node {node_id} {host}"


def set_node_title(node_id: int, host: str) -> None:
    # setproctitle rewrites the argv area (what ps shows and /proc/<pid>/cmdline holds) and,
    # on Linux, the thread name in /proc/<pid>/comm (cut by the kernel to 15 bytes).
    setproctitle(node_title(node_id, host))


def os_thread_name(python_name: str, code_file: str, code_name: str) -> str:
    """The kernel name of a thread: its Python name when the project gave it one, else a name
    from the library and function it runs (grpc starts threads named only ``Thread-N (_run)``)."""
    if not python_name.startswith("Thread-"):
        if python_name.endswith("-driver"):
            return "raft-driver"  # the process already says which node
        return python_name[:_COMM_BYTES]
    parts = code_file.replace("\\", "/").split("/")
    library = next((p for p in reversed(parts[:-1]) if p in _LIBRARIES), None)
    function = code_name.strip("_")
    function = _SHORT.get(function, function)
    if library is None:
        return f"py-{function}"[:_COMM_BYTES]
    return f"{library}-{function}"[:_COMM_BYTES]


_LIBRARIES = ("grpc", "trio", "pysyncobj", "asyncio", "concurrent")
_SHORT = {"poll_wrapper": "poller", "channel_spin": "spin"}  # grpc's, to fit in 15 bytes
_named: weakref.WeakSet[threading.Thread] = weakref.WeakSet()  # the start hook named these


def _set_os_name(native_id: int, name: str) -> None:
    # Through /proc, not prctl: it names any thread of this process by its kernel id, and a
    # thread that has ended meanwhile fails with an error instead of naming another one.
    with open(f"/proc/self/task/{native_id}/comm", "w") as f:
        f.write(name.encode("utf-8", "replace")[:_COMM_BYTES].decode("utf-8", "ignore"))


def _name_on_first_call(frame: FrameType, event: str, arg: Any) -> None:
    # Runs as the new thread's profile function until it sees the thread's own code: the first
    # frame outside threading.py, or a compiled target that Thread.run calls (grpc's poller);
    # then it names the thread and removes itself, so a thread pays for it only as it starts.
    in_threading = frame.f_code.co_filename == threading.__file__
    if event == "call" and not in_threading:
        where, what = frame.f_code.co_filename, frame.f_code.co_name
    elif event == "c_call" and in_threading and frame.f_code.co_name == "run":
        where = str(getattr(arg, "__module__", "") or "").replace(".", "/") + "/"
        what = str(getattr(arg, "__name__", "run"))
    else:
        return
    sys.setprofile(None)
    thread = threading.current_thread()
    _named.add(thread)
    with contextlib.suppress(Exception):  # a name is a convenience: never stop a thread
        _set_os_name(threading.get_native_id(), os_thread_name(thread.name, where, what))


def name_compiled_threads() -> None:
    """Name the threads that run no Python code at all, which the start hook never sees
    (grpc's completion-queue poller runs a compiled function). Call it once they exist."""
    if not sys.platform.startswith("linux"):
        return
    for thread in threading.enumerate():
        target = getattr(thread, "_target", None)
        if thread.ident is None or thread in _named or target is None:
            continue
        if not thread.name.startswith("Thread-"):
            continue
        module = str(getattr(target, "__module__", "") or "").replace(".", "/") + "/"
        name = os_thread_name(thread.name, module, str(getattr(target, "__name__", "run")))
        if thread.native_id is not None:
            with contextlib.suppress(OSError):  # ended meanwhile
                _set_os_name(thread.native_id, name)


def name_threads() -> None:
    """Give every thread started from now on a kernel name (Linux only)."""
    if sys.platform.startswith("linux"):
        threading.setprofile(_name_on_first_call)
