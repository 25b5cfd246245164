"""Moved to ``collector.storage.sqlite`` (the storage format lives in ``collector/storage/``): kept for the
imports not moved yet. New code imports ``collector.storage.sqlite``; a test that patches the store patches
it there."""

from collector.storage.records import decode_session, encode_session
from collector.storage.sqlite import SCHEMA_VERSION, NewerStateFile, SqliteStore, fingerprint

__all__ = ["SCHEMA_VERSION", "NewerStateFile", "SqliteStore", "decode_session", "encode_session", "fingerprint"]
