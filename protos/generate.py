"""Regenerate the Python stubs of the contract into sdk/v1 (``make gen``).

Runs grpcio-tools with mypy-protobuf so every module ships a ``.pyi``. Generated files are committed;
``tests/unit/test_generated_stubs.py`` regenerates into a temporary folder and fails when they differ.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_PACKAGE = PROTO_ROOT / "agentmesh" / "v1"
DEFAULT_OUT = PROTO_ROOT.parent / "sdk" / "v1"

_INIT = '"""Generated stubs of the agentmesh.v1 contract (``make gen``; never edited by hand)."""\n'


def generate(out_dir: Path) -> list[Path]:
    """Generate stubs for every proto of agentmesh.v1 into ``out_dir`` and return the files written."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    # protoc finds the mypy-protobuf plugins on PATH; they live beside this interpreter.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_PACKAGE.glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        generated = Path(tmp) / "agentmesh" / "v1"
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in out_dir.glob("*_pb2*"):
            stale.unlink()
        written = []
        for source in sorted(generated.iterdir()):
            target = out_dir / source.name
            shutil.copyfile(source, target)
            written.append(target)
        (out_dir / "__init__.py").write_text(_INIT)
        written.append(out_dir / "__init__.py")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: sdk/v1)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
