"""Why a node did not start, in one line, and the exit code that tells a supervisor what to do.

Exit codes of ``raftchat node`` (docs/operations.md):

* 0: stopped on SIGTERM or SIGINT;
* 1: an unexpected error (with its traceback), or a stop that overran ``node.shutdown_timeout_s``;
* 2: refused: the configuration, or a data directory of another cluster or node. Starting again
  unchanged fails again, so a supervisor should not retry;
* 3: something the node needs is unavailable: an address not on this machine, a port taken, a
  data directory that cannot be written. It may work once the port is free or the disk is back.
"""

from __future__ import annotations

from cluster.listen import ListenError, bind_problem

from .config import Config

EXIT_FAILED = 1
EXIT_REFUSED = 2
EXIT_UNAVAILABLE = 3


class StartupError(Exception):
    """The node cannot start; ``str(self)`` is the whole explanation, one line."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def refused(message: str) -> StartupError:
    return StartupError(message, EXIT_REFUSED)


def unavailable(message: str) -> StartupError:
    return StartupError(message, EXIT_UNAVAILABLE)


def startup_error_in(exc: BaseException) -> StartupError | None:
    """The StartupError that ``exc`` is or carries (trio's nurseries wrap what their tasks
    raise in exception groups, one per nursery it passed through)."""
    if isinstance(exc, StartupError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = startup_error_in(inner)
            if found is not None:
                return found
    return None


def check_group_count(found: int, config: Config, where: str) -> None:
    """Refuse slot groups other than ``cluster.groups`` in ``where`` (the cluster map, a data
    directory): the node listens for Raft on ``raft_port + g`` for the configured groups only,
    and channels hash onto the configured count, so a mismatch would hide stored messages and
    leave groups unreachable rather than fail. The count is fixed when the cluster is created;
    the default became 3 after it had been 8 (ADR 024)."""
    if found != config.cluster.groups:
        raise refused(
            f"{where} has {found} slot groups and this node's cluster.groups is "
            f"{config.cluster.groups}: set cluster.groups = {found} (the count is fixed when "
            "the cluster is created)"
        )


def listen_addresses(config: Config) -> list[tuple[str, str]]:
    """(what, ``host:port``) of every listener the node will open: Raft ports of every group,
    not only those it holds now (the controller may move any group here later)."""
    host, c = config.node.host, config.cluster
    out = [("Raft", f"{host}:{c.raft_port + g}") for g in range(c.groups + 1)]
    out.append(("peer gRPC", f"{host}:{c.grpc_port}"))
    out.append(("public gRPC", f"{host}:{config.grpc.port}"))
    out.append(("HTTP", f"{host}:{config.http.port}"))
    if config.http.also_host and config.http.also_host != host:
        out.append(("HTTP", f"{config.http.also_host}:{config.http.port}"))
    out.append(("WKProto TCP", f"{host}:{config.gateway.tcp_port}"))
    out.append(("WKProto WebSocket", f"{host}:{config.gateway.ws_port}"))
    if config.tls.cert_file:
        out.append(("WKProto WebSocket over TLS", f"{host}:{config.gateway.wss_port}"))
    return out


def check_addresses(config: Config) -> None:
    """Fail fast, before the data directory is touched, if an address is not on this machine
    or a port is taken. Each listener also reports its own bind failure, for a port taken in
    the moment between this check and its bind."""
    for what, address in listen_addresses(config):
        problem = bind_problem(address)
        if problem is not None:
            raise unavailable(str(ListenError(what, address, problem)))
