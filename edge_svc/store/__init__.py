"""Adapters behind the edge's ports: Redis (owned or external), SQLite outbox, Qdrant Edge, bundle file."""
