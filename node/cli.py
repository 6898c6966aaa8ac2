"""The ``raftchat`` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from .config import ConfigError, load_config
from .dev import DEFAULT_DATA, DEFAULT_HOST_BASE
from .log import announce, setup_logging
from .private_files import PRIVATE_UMASK


def _cmd_node(args: argparse.Namespace) -> int:
    os.umask(PRIVATE_UMASK)
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"raftchat: configuration error: {e}", file=sys.stderr)
        return 2
    from .proctitle import name_threads, set_node_title

    name_threads()  # before any thread starts, the log's stderr reader included
    setup_logging(cfg.node.id, cfg.log.level, cfg.log.format, whole_process=True)
    set_node_title(cfg.node.id, cfg.node.host)
    from .identity import DataDir
    from .startup import StartupError, check_addresses
    from .tls import load_tls

    # Before the node's heavy imports: a refusal or a port taken is reported within a second.
    try:
        tls = load_tls(cfg)
        check_addresses(cfg)
        datadir = DataDir.open(cfg)
    except StartupError as e:
        announce(str(e), logging.ERROR)
        return e.code
    from .app import run_node

    return run_node(cfg, datadir, tls)


def _cmd_dev(args: argparse.Namespace) -> int:
    from .dev import run_dev

    return run_dev(
        nodes=args.nodes,
        data_dir=args.data,
        config_path=args.config,
        host_base=args.host_base,
        zones=args.zones,
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    from bench.load import run_bench

    return run_bench(args)


def _cmd_chaos(args: argparse.Namespace) -> int:
    from chaos.runner import run_chaos

    return run_chaos(args)


def _add_chaos(sub: Any) -> None:
    # The chaos suite drives a cluster from outside; only its command line lives here.
    p_chaos = sub.add_parser("chaos", help="Jepsen-style fault injection against a local cluster")
    chaos_sub = p_chaos.add_subparsers(dest="chaos_command", required=True)
    p_run = chaos_sub.add_parser("run", help="one run: cluster, workload, faults, checks, report")
    from chaos.runner import add_arguments

    add_arguments(p_run)
    p_run.set_defaults(func=_cmd_chaos)


def _cmd_fuzz(args: argparse.Namespace) -> int:
    from chaos.fuzz.runner import run_fuzz

    return run_fuzz(args)


def _add_fuzz(sub: Any) -> None:
    # The live fuzzer drives a cluster from outside, like the chaos suite (docs/fuzz.md).
    p_fuzz = sub.add_parser(
        "fuzz", help="live fuzzing of every listener of a local cluster under a checked workload"
    )
    from chaos.fuzz.runner import add_arguments

    add_arguments(p_fuzz)
    p_fuzz.set_defaults(func=_cmd_fuzz)


def main(argv: list[str] | None = None) -> int:
    # Before anything imports grpc, which reads it once: at its default verbosity grpc's C
    # core writes a line per failed TLS handshake, which any stranger can cause by the
    # thousand. Errors only, unless the environment asks for more.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    parser = argparse.ArgumentParser(prog="raftchat", description="raftchat IM server")
    sub = parser.add_subparsers(dest="command", required=True)
    p_node = sub.add_parser("node", help="run one node")
    p_node.add_argument("--config", help="TOML config file (RAFTCHAT_* variables override it)")
    p_node.set_defaults(func=_cmd_node)
    p_dev = sub.add_parser("dev", help="run a local development cluster and print its endpoints")
    p_dev.add_argument("--nodes", type=int, default=1)
    p_dev.add_argument("--data", default=DEFAULT_DATA, help="data directory of the local cluster")
    p_dev.add_argument("--config", help="base TOML config for every node")
    p_dev.add_argument(
        "--host-base",
        default=DEFAULT_HOST_BASE,
        help="loopback prefix A.B.C: node i listens on A.B.C.1i "
        f"(default {DEFAULT_HOST_BASE}; a single node then uses 127.0.0.1)",
    )
    p_dev.add_argument(
        "--zones",
        default="",
        help="the zone of node 1, 2, ..., comma-separated (m1,m1,m2: nodes 1 and 2 share "
        "machine m1); each group's replicas are spread over the zones",
    )
    p_dev.set_defaults(func=_cmd_dev)
    p_bench = sub.add_parser(
        "bench", help="benchmark a fresh local cluster: throughput, latency, idle CPU, failover"
    )
    from bench.load import add_arguments as add_bench_arguments

    add_bench_arguments(p_bench)
    p_bench.set_defaults(func=_cmd_bench)
    p_conns = sub.add_parser(
        "bench-connections",
        help="memory per idle authenticated connection of a fresh local node",
    )
    from bench.connections import add_arguments as add_connections_arguments
    from bench.connections import run as run_connections

    add_connections_arguments(p_conns)
    p_conns.set_defaults(func=run_connections)
    from .backup_cli import add_parser as add_backup_parser
    from .cluster_cli import add_parser
    from .restore import add_parser as add_restore_parser

    add_parser(sub)
    add_backup_parser(sub)
    add_restore_parser(sub)
    # Terminal clients: the client library's, registered here so that `raftchat` has them.
    from client.cli_chat import add_parsers as add_chat_parsers

    add_chat_parsers(sub)
    _add_chaos(sub)
    _add_fuzz(sub)
    raw = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(raw)
    args.argv = raw[2:] if raw[:2] == ["chaos", "run"] else raw[1:] if raw[:1] == ["fuzz"] else []
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
