"""A test-only storage backend: the memory backend with a records-per-Produce
limit of its own (``Backend.max_records_per_produce``), as JetStream has."""

from streams.storage.backend import Backend

CAP = 3

BACKEND = Backend(
    "capped-memory",
    "the memory backend, at most 3 records per Produce (tests only)",
    "streams.storage.memory:open_store",
    max_records_per_produce=CAP,
)
