"""Snapshots (issue #3): consistent capture of table contents before a risky migration.

Building blocks, library only:

* :mod:`.manifest` - the pydantic models written as ``manifest.json`` (never a password);
* :mod:`.checksum` - an order-independent row checksum computed on the server;
* :mod:`.local` - a local file store with atomic writes, publish-last and verification;
* :mod:`.capture` - all tables read in one REPEATABLE READ, READ ONLY transaction over binary COPY,
  zstd-compressed while streaming;
* :mod:`.load` - streams a captured file back with ``COPY ... FROM STDIN`` (basis for restore).
"""
