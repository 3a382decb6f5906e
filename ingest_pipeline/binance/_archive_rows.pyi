# The compiled writer (_archive_rows.c): see encode's docstring there.

def encode(
    kind: int, block: bytes, head: bytes, ingest_ts: bytes, min_exp: int, max_exp: int, /
) -> tuple[bytes, bytes, bytes, bytes, bytes, bytes | None, bytes | None] | None: ...
