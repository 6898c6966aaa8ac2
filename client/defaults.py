"""Addresses of node 1 of the standard local cluster (``raftchat dev``), the defaults of the
clients and of ``docs/client.md``'s examples. Kept apart so that reading them loads nothing."""

DEFAULT_HTTP_URL = "http://127.0.0.11:5001"
DEFAULT_TCP_ADDR = "127.0.0.11:5100"
DEFAULT_WS_ADDR = "127.0.0.11:5200"
DEFAULT_GRPC_TARGET = "127.0.0.11:5002"

DEV_DATA_DIR = "data"
"""``raftchat dev``'s (and ``make run``'s) data directory, relative to where it runs."""
API_TOKEN_ENV = "RAFTCHAT_AUTH_API_TOKEN"
ADMIN_TOKEN_ENV = "RAFTCHAT_AUTH_ADMIN_TOKEN"
"""The nodes' own variables for ``auth.api_token`` and ``auth.admin_token``: on a node's
machine, or with them exported, the command-line clients need nothing more."""
