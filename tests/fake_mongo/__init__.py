"""A test double of the part of pymongo the MongoDB store uses, and helpers to
drive a processor on it.

The double replaces pymongo's classes, not the server behind them: the store
is handed ``FakeMongo().db`` where it wants a ``Database``, and the client,
collections, cursors, change streams and sessions it reaches from there are
in-memory stand-ins. There is no wire protocol and no BSON round trip:
documents are stored and returned as deep copies of the Python values written,
so a value BSON would refuse or convert passes through unchanged (a collection
whose codec reads ``RawBSONDocument`` gets the BSON of those values).
``tests.wire_mongo`` serves this engine at the wire, where pymongo's own
networking, sessions and codecs run.

It is a single database with an oplog: every write appends a change with an
increasing ``clusterTime`` and a resume token, and change streams read that
oplog from a point, as a replica set's do. Errors are pymongo's own exception
classes carrying the server's real error codes, so the store's error handling
runs exactly as it would against a server.

What it does not model: pymongo's automatic one-time resume of a change stream
after a network error (an injected error always reaches the caller: the worse
case), reads of a transaction's own uncommitted writes, write conflicts between
concurrent transactions (the store's claim check relies on MongoDB raising one
when two leaders write the checkpoint at once), and query operators beyond the
few the store and these tests use.

Modules: ``query`` (filters, projections, the order of BSON types),
``updates`` (update operators), ``indexes``, ``data`` (a collection's
documents and the duplicate-key check), ``oplog``, ``streams`` (cursors and
change streams), ``sessions`` (transactions), ``server`` (``FakeMongo`` and the
client, database and collection classes, with failure injection) and
``harness`` (running a processor on the fake).
"""

from __future__ import annotations

from tests.fake_mongo.harness import Running, Tokens, sample
from tests.fake_mongo.query import Document
from tests.fake_mongo.server import FakeMongo

__all__ = ["Document", "FakeMongo", "Running", "Tokens", "sample"]
