"""gRPC servicers of central: protobuf <-> domain translation only."""
