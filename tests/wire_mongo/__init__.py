"""A MongoDB server for the tests, at the wire: pymongo's real client (its
networking, server selection, sessions, retryable writes, transactions with
their error labels, change streams with their automatic resume) talks to it
over TCP as to a one-member replica set running MongoDB 6.0.

It runs on the test double's engine (``tests.fake_mongo``: documents, indexes,
the oplog, change streams) and adds what only a server has: BSON in and out,
bytes another driver stored and pymongo may not decode, the 16 MB limits,
cursors with post-batch resume tokens, resume tokens refused after an
invalidate, a majority commit point that can lag the last write, transactions
that conflict, and mongod's ``failCommand`` fail point (error codes, labels,
write concern errors, dropped connections).

Modules: ``listener`` (the TCP side, on mockupdb's message codec),
``transactions`` (snapshots and conflicts) and ``server`` (``WireMongo``: the
commands and the controls tests use)."""

from __future__ import annotations

from tests.wire_mongo.server import FAILOVER_LABELS, CommandError, WireMongo

__all__ = ["FAILOVER_LABELS", "CommandError", "WireMongo"]
