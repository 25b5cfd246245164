"""The storage format: what the state file holds and how it is read back, in one place.

- ``rules``: the rule of each stored field, declared beside the field (``field(metadata=stored(...))``),
  and the codec generated from a dataclass's fields: encode, decode, validation and the unknown-field check,
  the same rules both ways (nothing is written that a restart would refuse to read).
- ``records``: the rows of the file: a session (``SessionState``, with its ``LastRun``) and the meta values.
- ``sqlite``: the file itself (``SqliteStore``): its tables, versions, upgrades and damage.

Nothing is imported here, so that ``collector.state`` can declare its fields' rules without a cycle.
"""
