"""Thin, typed clients the CLI uses to talk to central and edges (the only gRPC code in aeterna_cli)."""
