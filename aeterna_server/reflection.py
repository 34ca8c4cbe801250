"""Server reflection that also resolves method names.

grpcurl resolves ``describe pkg.Service.Method`` by asking for the file that
contains the symbol ``pkg.Service.Method``. The Python protobuf runtime's
descriptor pool knows services, messages, enums and fields but not methods,
so the stock servicer answers NOT_FOUND and operators see "Symbol not found"
for a method that exists. This servicer falls back to the enclosing service.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grpc import aio
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

SERVICE_NAME: str = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name


# grpcio-reflection ships no type information, so its base class is Any to mypy.
class MethodAwareReflectionServicer(ReflectionServicer):  # type: ignore[misc]
    """The v1alpha reflection servicer, plus method-name lookups."""

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


def enable_reflection(service_names: Sequence[str], server: aio.Server) -> None:
    """Serve reflection for ``service_names`` (plus reflection itself) on ``server``."""
    servicer = MethodAwareReflectionServicer([*service_names, SERVICE_NAME])
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
