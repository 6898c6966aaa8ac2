"""Which tokens the command-line clients send (``raftchat chat``, ``tail``, ``cluster``).

In this order: the command-line option; the node's own variable (``RAFTCHAT_AUTH_API_TOKEN``,
``RAFTCHAT_AUTH_ADMIN_TOKEN``); and, only when no node address was given (the commands then
talk to the local ``raftchat dev`` cluster), the token file that ``raftchat dev`` made in
``./data``. A token file of the dev cluster is never sent to a node named on the command line.
"""

from __future__ import annotations

import os
from pathlib import Path

from .defaults import ADMIN_TOKEN_ENV, API_TOKEN_ENV, DEV_DATA_DIR


def _token(given: str | None, env: str, dev_file: str, default_target: bool) -> str | None:
    if given:
        return given
    if os.environ.get(env):
        return os.environ[env]
    if default_target:
        try:
            return (Path(DEV_DATA_DIR) / dev_file).read_text().strip() or None
        except OSError:
            return None
    return None


def api_token(given: str | None, *, default_target: bool) -> str | None:
    return _token(given, API_TOKEN_ENV, "api.token", default_target)


def admin_token(given: str | None, *, default_target: bool) -> str | None:
    return _token(given, ADMIN_TOKEN_ENV, "admin.token", default_target)
