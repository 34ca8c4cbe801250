"""What edge and central must agree on byte for byte: canonical encodings, batch signatures, value checks.

The one part of ``aeterna_shared`` that reads protobuf messages (the
generated ``aeterna.*`` ones included); it never imports ``grpc``.
"""
