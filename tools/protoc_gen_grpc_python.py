"""A protoc plugin that runs grpcio-tools' built-in gRPC Python generator.

buf runs local plugins through the protoc plugin protocol, but grpcio-tools
only ships its gRPC generator compiled into its own protoc. This bridge takes
buf's CodeGeneratorRequest, hands the already-parsed descriptors to that
protoc via ``--descriptor_set_in`` and returns the files it wrote, so that
``buf generate`` produces the same ``*_pb2_grpc.py`` as
``python -m grpc_tools.protoc --grpc_python_out`` with no network access.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2
from grpc_tools import protoc


def main() -> int:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    response = plugin_pb2.CodeGeneratorResponse()
    response.supported_features = plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    with tempfile.TemporaryDirectory() as tmp:
        descriptor_set = descriptor_pb2.FileDescriptorSet(file=request.proto_file)
        set_path = Path(tmp, "descriptors.binpb")
        set_path.write_bytes(descriptor_set.SerializeToString())
        out_dir = Path(tmp, "out")
        out_dir.mkdir()
        args = ["grpc_tools.protoc", f"--descriptor_set_in={set_path}", f"--grpc_python_out={out_dir}"]
        if request.parameter:
            args[-1] = f"--grpc_python_out={request.parameter}:{out_dir}"
        code = protoc.main([*args, *request.file_to_generate])
        if code != 0:
            response.error = f"grpc_tools.protoc exited with {code}"
        else:
            for path in sorted(out_dir.rglob("*.py")):
                generated = response.file.add()
                generated.name = path.relative_to(out_dir).as_posix()
                generated.content = path.read_text(encoding="utf-8")
    sys.stdout.buffer.write(response.SerializeToString())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
