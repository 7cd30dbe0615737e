"""What the test suites share: the servers they run and the checker of what
clients were told.

- ``inproc.InProcessServer``: a server in this process, on its own loop thread.
- ``process.ServerProcess``: ``python server.py`` as a child process.
- ``journal``: a journal of what clients were told, and ``check_store``.
- ``nats.NatsCluster``: a 3-node NATS JetStream cluster on loopback (the
  session fixture ``nats_cluster`` in tests/conftest.py), nodes killed and
  started again by index.
- ``capped_backend``: a test-only backend with its own records-per-Produce limit.
- ``group_wire.WireMember``: one consumer-group member over the generated
  grpc.aio stubs (join, read, ack, nack, kill, leave), no client library.
- ``group_checker.GroupChecker``: the consumer-group contract checked from
  what members see (ordering, durability of settlements, attempts, parking).
"""
