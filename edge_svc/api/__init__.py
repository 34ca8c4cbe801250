"""The edge's gRPC surface: the agent-facing servicer and the client of central. Only this package imports grpc."""
