"""The ``raftchat`` command."""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, load_config
from .log import setup_logging


def _cmd_node(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"raftchat: configuration error: {e}", file=sys.stderr)
        return 2
    setup_logging(cfg.node.id, cfg.log.level, cfg.log.format)
    from .app import run_node

    run_node(cfg)
    return 0


def _cmd_dev(args: argparse.Namespace) -> int:
    from .dev import run_dev

    return run_dev(nodes=args.nodes, data_dir=args.data, config_path=args.config)


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    return run_bench(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raftchat", description="raftchat IM server")
    sub = parser.add_subparsers(dest="command", required=True)
    p_node = sub.add_parser("node", help="run one node")
    p_node.add_argument("--config", help="TOML config file (RAFTCHAT_* variables override it)")
    p_node.set_defaults(func=_cmd_node)
    p_dev = sub.add_parser("dev", help="run a local development cluster and print its endpoints")
    p_dev.add_argument("--nodes", type=int, default=1)
    p_dev.add_argument("--data", default="./data", help="data directory of the local cluster")
    p_dev.add_argument("--config", help="base TOML config for every node")
    p_dev.set_defaults(func=_cmd_dev)
    p_bench = sub.add_parser(
        "bench", help="benchmark a fresh local cluster: throughput, latency, idle CPU, failover"
    )
    from .bench import add_arguments as add_bench_arguments

    add_bench_arguments(p_bench)
    p_bench.set_defaults(func=_cmd_bench)
    from .cluster_cli import add_parser

    add_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
