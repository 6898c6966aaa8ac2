"""Addresses of node 1 of the standard local cluster (``raftchat dev``), the defaults of the
clients and of ``docs/client.md``'s examples. Kept apart so that reading them loads nothing."""

DEFAULT_HTTP_URL = "http://127.0.0.11:5001"
DEFAULT_TCP_ADDR = "127.0.0.11:5100"
DEFAULT_WS_ADDR = "127.0.0.11:5200"
DEFAULT_GRPC_TARGET = "127.0.0.11:11110"
