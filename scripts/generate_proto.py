"""Regenerate the protobuf and gRPC modules under conduit/v1alpha from proto/.

Usage: python scripts/generate_proto.py [OUTPUT_ROOT]

OUTPUT_ROOT defaults to the repository root; the stale-code test passes a
temporary folder and compares the result with the committed files.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_FILES = ["conduit/v1alpha/publish.proto"]


def generate(output_root: Path) -> None:
    """Write publish_pb2.py, publish_pb2.pyi and publish_pb2_grpc.py below output_root."""
    include_root = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include_root}",
        f"--python_out={output_root}",
        f"--pyi_out={output_root}",
        f"--grpc_python_out={output_root}",
        *PROTO_FILES,
    ]
    status = protoc.main(args)
    if status != 0:
        raise SystemExit(f"protoc failed with exit status {status}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
