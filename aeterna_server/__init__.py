"""Building a ``grpc.aio`` server the same way for central and edge: options, compression, reflection."""
