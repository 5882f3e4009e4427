"""Regenerate the Python protocol code from protos/ (`python -m meshfleet.protogen`).

The committed files under meshfleet/v1/ must equal what this produces; a test
regenerates into a temporary directory and compares byte for byte.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO_ROOT / "protos"
PROTO_FILES = ("meshfleet/v1/hub.proto",)
GENERATED = ("meshfleet/v1/hub_pb2.py", "meshfleet/v1/hub_pb2.pyi", "meshfleet/v1/hub_pb2_grpc.py")


def generate(out_dir: Path) -> None:
    """Run protoc (from grpcio-tools) on PROTO_FILES, writing into out_dir."""
    from grpc_tools import protoc  # build-time dependency only

    include = Path(protoc.__file__).resolve().parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(PROTO_ROOT / p) for p in PROTO_FILES),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed; see its output above")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT, help="output root (default: the repo)")
    ns = parser.parse_args(argv)
    generate(ns.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
