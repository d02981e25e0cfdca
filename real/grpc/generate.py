"""`python -m real.grpc.generate` (or `make proto`): the Python modules of the vendored protocol.

grpcio-tools (a dev dependency) compiles `grpc_service.proto` and `model_config.proto` into
`*_pb2.py` / `*_pb2_grpc.py` beside them; the generated files are committed, so running the
stack never needs the compiler. protoc writes top-level imports (`import model_config_pb2`),
which only work with this folder on sys.path: they are rewritten to package imports.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTOS = ("model_config.proto", "grpc_service.proto")
PACKAGE = "real.grpc"


def generate() -> list[Path]:
    """Compile the protos; the generated files' paths."""
    from grpc_tools import protoc  # dev dependency: only the regeneration needs it

    args = ["protoc", f"-I{HERE}", f"--python_out={HERE}", f"--grpc_python_out={HERE}", *(str(HERE / p) for p in PROTOS)]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (HERE / "model_config_pb2_grpc.py").unlink(missing_ok=True)  # no service in it: nothing to keep
    written = []
    for proto in PROTOS:
        stem = proto.removesuffix(".proto")
        for path in (HERE / f"{stem}_pb2.py", HERE / f"{stem}_pb2_grpc.py"):
            if not path.exists():
                continue
            text = re.sub(r"^import (\w+_pb2) as", rf"from {PACKAGE} import \1 as", path.read_text(), flags=re.M)
            path.write_text(text)
            written.append(path)
    return written


if __name__ == "__main__":
    for p in generate():
        print(p, file=sys.stderr)
