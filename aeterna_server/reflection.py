"""Server reflection, v1 and v1alpha, that also resolves method names.

Two protocols. gRPC reflection was published as ``grpc.reflection.v1alpha``
and later as ``grpc.reflection.v1``; current tools (``buf curl
--reflect-protocol grpc-v1``, newer grpcurl and IDEs) may ask for v1 alone and
get UNIMPLEMENTED from a server that only has v1alpha. grpcio-reflection
serves v1alpha only and ships no v1 stubs, and grpcio-tools bundles no
reflection.proto to generate them from. The two protocols are wire-identical
(same messages, same field numbers; only the package differs), so the
servicer below is also registered under ``/grpc.reflection.v1.ServerReflection/
ServerReflectionInfo`` with the v1alpha message classes doing the
(de)serialization. So that v1 is not only callable but also listed and
describable like any other service, its file is added to the default
descriptor pool: the v1alpha file copied with the package, file name and
language options of the official ``grpc/reflection/v1/reflection.proto``.

Method names. grpcurl resolves ``describe pkg.Service.Method`` by asking for
the file that contains the symbol ``pkg.Service.Method``. The Python protobuf
runtime's descriptor pool knows services, messages, enums and fields but not
methods, so the stock servicer answers NOT_FOUND and operators see "Symbol not
found" for a method that exists. This servicer falls back to the enclosing
service, for both protocols.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool
from grpc import aio
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

SERVICE_NAME: str = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name
"""``grpc.reflection.v1alpha.ServerReflection`` (what grpcio-reflection serves)."""

V1_PACKAGE = "grpc.reflection.v1"
V1_FILE = "grpc/reflection/v1/reflection.proto"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
"""``grpc.reflection.v1.ServerReflection`` (the current protocol, served with the v1alpha messages)."""

SERVICE_NAMES: tuple[str, str] = (V1_SERVICE_NAME, SERVICE_NAME)
METHOD = "ServerReflectionInfo"


def _v1_file() -> descriptor.FileDescriptor:
    """``grpc/reflection/v1/reflection.proto`` in the default pool, added from the v1alpha file if absent."""
    pool = descriptor_pool.Default()
    try:
        return pool.FindFileByName(V1_FILE)
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old_prefix, new_prefix = f".{proto.package}.", f".{V1_PACKAGE}."
    proto.name = V1_FILE
    proto.package = V1_PACKAGE
    for message in proto.message_type:
        for message_field in message.field:
            if message_field.type_name.startswith(old_prefix):
                message_field.type_name = new_prefix + message_field.type_name[len(old_prefix) :]
    for service in proto.service:
        for method in service.method:
            method.input_type = new_prefix + method.input_type[len(old_prefix) :]
            method.output_type = new_prefix + method.output_type[len(old_prefix) :]
    proto.options.Clear()
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    proto.options.java_multiple_files = True
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.java_outer_classname = "ServerReflectionProto"
    pool.AddSerializedFile(proto.SerializeToString())
    return pool.FindFileByName(V1_FILE)


# grpcio-reflection ships no type information, so its base class is Any to mypy.
class MethodAwareReflectionServicer(ReflectionServicer):  # type: ignore[misc]
    """The reflection servicer (v1alpha messages, also serving v1), plus method-name lookups."""

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        response = super()._file_containing_symbol(request, fully_qualified_name)
        if not response.HasField("error_response") or "." not in fully_qualified_name:
            return response
        service_name, method_name = fully_qualified_name.rsplit(".", 1)
        try:
            service = self._pool.FindServiceByName(service_name)
        except KeyError:
            return response
        if method_name not in service.methods_by_name:
            return response
        return super()._file_containing_symbol(request, service_name)


def add_v1_reflection_to_server(servicer: MethodAwareReflectionServicer, server: aio.Server) -> None:
    """Serve ``servicer`` as ``grpc.reflection.v1.ServerReflection`` (wire-identical to v1alpha)."""
    _v1_file()
    handlers = {
        METHOD: grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1_SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(V1_SERVICE_NAME, handlers)


def enable_reflection(service_names: Sequence[str], server: aio.Server) -> None:
    """Serve reflection (v1 and v1alpha) for ``service_names`` plus both reflection services on ``server``."""
    servicer = MethodAwareReflectionServicer([*service_names, *SERVICE_NAMES])
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    add_v1_reflection_to_server(servicer, server)
