"""Moved to ``collector.storage.records`` (the storage format lives in ``collector/storage/``): kept for the
imports not moved yet."""

from collector.storage.records import LEGACY_FIELDS, decode_session, encode_session

__all__ = ["LEGACY_FIELDS", "decode_session", "encode_session"]
