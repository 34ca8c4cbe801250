#!/bin/sh
# Generates Java code from protos/ (and grpc.health.v1 from Debian's grpc-proto) and compiles
# clients/java/src into OUT/classes, offline, with Debian 12's packages only (see
# docs/clients.md, "Java"). Generated code goes to OUT and is never committed; OUT/classpath
# holds the run-time class path.
# Usage: clients/java/build.sh OUT
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
# --8<-- [start:build]
J=/usr/share/java
CP=$(printf "$J/%s.jar:" grpc-api grpc-context grpc-core grpc-netty grpc-protobuf grpc-protobuf-lite \
  grpc-stub protobuf proto-google-common-protos guava perfmark-api jctools-core \
  geronimo-annotation-1.3-spec netty-buffer netty-codec netty-codec-http netty-codec-http2 \
  netty-codec-socks netty-common netty-handler netty-handler-proxy netty-resolver netty-transport gson)
# google.rpc.ErrorInfo: Debian's proto-google-common-protos (1.16) predates it, so generate
# google/rpc/error_details.proto from the .proto files the googleapis-common-protos wheel ships.
RPC_PROTOS=${RPC_PROTOS:-$("$ROOT/.venv/bin/python" -c \
  'import os, google.rpc; print(os.path.dirname(os.path.dirname(list(google.rpc.__path__)[0])))')}
mkdir -p "$OUT/gen" "$OUT/classes"
protoc -I "$ROOT/protos" -I /usr/share/grpc-proto -I "$RPC_PROTOS" \
  --java_out="$OUT/gen" \
  --plugin=protoc-gen-grpc-java=/usr/bin/grpc_java_plugin --grpc-java_out="$OUT/gen" \
  $(cd "$ROOT/protos" && find aeterna -name '*.proto' | sort) \
  grpc/health/v1/health.proto google/rpc/error_details.proto
javac -nowarn -d "$OUT/classes" -cp "$CP" \
  $(find "$OUT/gen" "$ROOT/clients/java/src" -name '*.java' | sort)
echo "$OUT/classes:$CP" > "$OUT/classpath"
# --8<-- [end:build]
