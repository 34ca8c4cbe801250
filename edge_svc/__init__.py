"""The edge node: local memory layers, a durable outbox, the vector subset, the Cedar agent and the sync loops.

Rooms, by concern:

* ``records`` — the plain data the edge keeps (sessions, vectors, decisions, episodes, policy bundles);
* ``ports`` — the ``typing.Protocol`` ports the domain talks to (cache, outbox, vector store, central),
  with no driver types: adapters raise the project's own errors;
* ``memory`` — working and session memory on top of the cache port;
* ``vectors`` — the local vector subset with fallback to central and a frequency-based cache;
* ``policy`` — the Cedar agent and the policy watcher;
* ``link`` — the health monitor deciding online/offline;
* ``sync`` — collectors and drains that move outbox batches to central;
* ``store/`` — adapters: owned redis-server, Redis cache, SQLite outbox, Qdrant Edge, bundle file;
* ``api/`` — the gRPC servicer and the client of central (the only modules that import grpc);
* ``deps`` — ``open_edge``: the resources the edge opens (caches, owned redis-servers, outbox and its
  limits, vector shard, policy agent, the node) and closes;
* ``server``, ``__main__``, ``cli`` — the gRPC server and the process serving it, the entry point, commands.
"""
