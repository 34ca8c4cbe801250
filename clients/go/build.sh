#!/bin/sh
# Generates Go code from protos/ and builds clients/go/smoke into OUT/bin/aeterna-go-smoke,
# offline, with Debian 12's packages only (see docs/clients.md, "Go"). Generated code goes
# to OUT (a GOPATH workspace) and is never committed.
# Usage: clients/go/build.sh OUT
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
# --8<-- [start:build]
PREFIX=aeterna.dev/gen   # import path of the generated packages (the protos have no go_package)
M=""
for f in edge/v1/edge memory/v1/memory policy/v1/decision policy/v1/policy sync/v1/sync; do
  pkg=$(echo "$f" | cut -d/ -f1)$(echo "$f" | cut -d/ -f2)   # aeterna/edge/v1 -> package edgev1
  M="$M,Maeterna/$f.proto=$PREFIX/aeterna/$(dirname "$f");$pkg"
done
mkdir -p "$OUT/src/aeterna.dev/smoke" "$OUT/bin"
protoc -I "$ROOT/protos" \
  --go_out="$OUT/src" --go_opt="paths=import$M" \
  --go-grpc_out="$OUT/src" --go-grpc_opt="paths=import$M" \
  $(cd "$ROOT/protos" && find aeterna -name '*.proto' | sort)
cp "$ROOT/clients/go/smoke/main.go" "$OUT/src/aeterna.dev/smoke/"
cd "$OUT/src/aeterna.dev/smoke"
GO111MODULE=off GOPATH="$OUT:/usr/share/gocode" GOPROXY=off \
  go build -o "$OUT/bin/aeterna-go-smoke" .
# --8<-- [end:build]
