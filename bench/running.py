"""What every benchmark here runs the same way: its work directory, logging, and the hub's start-up noise."""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from mgmt.policies import KINDS

POLICY_PREFIXES = tuple(f"{kind}/" for kind in KINDS)


class StartupPolicyNoise(logging.Filter):
    """Drops the hub's "<Kind>/<ns>/<name>: ..." policy warnings (missing backends while agents still connect)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING and record.getMessage().startswith(POLICY_PREFIXES))


def run(name: str, args: argparse.Namespace,
        main_async: Callable[[argparse.Namespace, Path], Coroutine[Any, Any, None]]) -> int:
    """Run `main_async(args, workdir)`: a temporary work directory removed at the end, or a new one under
    `args.workdir` that is kept; exit code 1 with the message on a RuntimeError."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("grpc._cython.cygrpc").setLevel(logging.ERROR)  # "Aborting method ... due to server stop"
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=args.workdir))
    else:
        workdir = Path(tempfile.mkdtemp(prefix=f"meshfleet-{name}-"))
    try:
        asyncio.run(main_async(args, workdir))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"(state kept in {workdir})")
    return 0


def cpu_model() -> str:
    """The CPU's model name (Linux), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
