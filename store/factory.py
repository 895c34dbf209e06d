"""Open the checkpoint store that a URL names."""

from __future__ import annotations

from store.base import CheckpointStore
from store.errors import StoreError


def store_from_url(url: str) -> CheckpointStore:
    """Return an unstarted store for ``sqlite:///PATH`` or ``mongodb://...``.

    Raises:
        StoreError: the URL names no store kind taskpoint has.
    """
    if url.startswith("sqlite:///"):
        from store.sqlite import SQLiteStore

        return SQLiteStore.from_url(url)
    if url.startswith(("mongodb://", "mongodb+srv://")):
        from store.mongo import MongoStore

        return MongoStore(url)
    raise StoreError(
        f"unknown store URL {url!r}: expected sqlite:///PATH or mongodb://HOST/DB"
    )
