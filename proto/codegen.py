"""Generate the Python modules of the .proto files, or check that the committed ones match.

    python -m proto.codegen           # regenerate in place
    python -m proto.codegen --check   # exit 1 if a committed module differs from its source

Generated modules are committed (so that installing raftchat needs no protoc), and CI runs the
check, so they never drift from the .proto sources.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def sources() -> list[Path]:
    return sorted((ROOT / "proto").rglob("*.proto"))


def generate(out: Path) -> list[Path]:
    bin_dir = Path(sys.executable).parent
    protos = [str(p.relative_to(ROOT)) for p in sources()]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            ".",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
            f"--mypy_out={out}",
            f"--mypy_grpc_out={out}",
            *protos,
        ],
        cwd=ROOT,
        check=True,
    )
    return sorted(p.relative_to(out) for p in out.rglob("*") if p.name.endswith(SUFFIXES))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generated = generate(Path(tmp))
        stale = [
            rel
            for rel in generated
            if not (ROOT / rel).exists() or not filecmp.cmp(Path(tmp) / rel, ROOT / rel, False)
        ]
        if args.check:
            for rel in stale:
                print(f"out of date: {rel} (run `make proto`)", file=sys.stderr)
            return 1 if stale else 0
        for rel in generated:
            shutil.copyfile(Path(tmp) / rel, ROOT / rel)
        print(f"generated {len(generated)} modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
