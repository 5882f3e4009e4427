"""The `meshfleet` command: one entry point for the hub, the agent and the demo."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from agent import cli as agent_cli
from meshfleet import __version__, demo, offline
from mgmt import cli as mgmt_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshfleet", description="Manage the Istio meshes of many clusters as one.")
    parser.add_argument("--version", action="version", version=f"meshfleet {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)
    mgmt_cli.add_parsers(sub)
    agent_cli.add_parsers(sub)
    demo.add_parser(sub)
    offline.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result: int = args.func(args)
    except BrokenPipeError:  # `meshfleet status | head`: the reader left, which is not our error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
