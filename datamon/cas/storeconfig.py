"""The store's own settings, written once into the blob store as ``datamon-store.json``.

Chunker parameters decide every key, so they belong to the store, not to a client: two
clients with different defaults writing to one bucket must still deduplicate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from datamon.cas.blobstore import BlobStore
from datamon.cas.chunker import ChunkerParams
from datamon.errors import NotFound, StoreUnavailable

CONFIG_NAME = "datamon-store.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class StoreConfig:
    chunker: ChunkerParams
    format: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        return json.dumps({"format": self.format, "chunker": self.chunker.to_dict()}, sort_keys=True).encode()


def load_or_create(blobs: BlobStore, default: ChunkerParams | None = None) -> StoreConfig:
    """Read the store's settings, writing ``default`` first if the store is new."""
    where = getattr(blobs, "display_url", blobs.url)
    try:
        raw = blobs.get(CONFIG_NAME)
    except NotFound:
        cfg = StoreConfig(default or ChunkerParams())
        blobs.put(CONFIG_NAME, cfg.to_json())
        # Re-read: if another process created the store at the same moment, its settings win.
        raw = blobs.get(CONFIG_NAME)
    try:
        d = json.loads(raw)
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        fmt = d["format"]
        if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
            raise ValueError(f"format {str(fmt)[:20]!r} is not a version number")
        params = ChunkerParams.from_dict(d["chunker"])
    except (ValueError, KeyError, TypeError, RecursionError, OverflowError) as e:
        detail = f"missing {e}" if isinstance(e, KeyError) else str(e)[:200]
        raise StoreUnavailable(
            f"{CONFIG_NAME} in {where} is unreadable ({detail})", "restore it from a backup of the store"
        ) from None
    if fmt > FORMAT_VERSION:
        raise StoreUnavailable(
            f"blob store {where} has format {fmt}, newer than this datamon understands",
            "upgrade datamon",
        )
    return StoreConfig(params, fmt)
