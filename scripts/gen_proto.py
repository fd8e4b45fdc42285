"""Regenerate star_proto/ (Python, gRPC stubs and .pyi) from proto/star/v1/*.proto.

    python scripts/gen_proto.py            # rewrite star_proto/ in place
    python scripts/gen_proto.py --out DIR  # write into DIR (the staleness test compares the two)

The generated modules import each other as `star.v1.x_pb2`; we rewrite that to `star_proto.x_pb2` so
the package is importable under the name `star_proto` without touching sys.path.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE = "star_proto"
_IMPORT = re.compile(r"^from star\.v1 import (\w+) as (\w+)$", re.MULTILINE)
_HEADER = '"""Generated from proto/star/v1 by scripts/gen_proto.py. Do not edit."""\n'


def generate(out: Path) -> list[Path]:
    """Write the generated package into `out` (created if missing); returns the files written."""
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "star" / "v1").glob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for src in sorted((Path(tmp) / "star" / "v1").iterdir()):
            text = _IMPORT.sub(rf"from {PACKAGE} import \1 as \2", src.read_text())
            dst = out / src.name
            dst.write_text(text)
            written.append(dst)
    init = out / "__init__.py"
    init.write_text(_HEADER)
    (out / "py.typed").write_text("")
    return [init, out / "py.typed", *written]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / PACKAGE, help="output package directory")
    args = ap.parse_args(argv)
    if args.out.resolve() == (ROOT / PACKAGE).resolve() and args.out.exists():
        shutil.rmtree(args.out)
    for path in generate(args.out):
        print(path, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
