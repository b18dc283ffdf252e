"""Record factories for the metadata tests."""

from __future__ import annotations

import hashlib

from datamon.meta.records import BundleRecord


def hex_id(seed: str) -> str:
    """A deterministic 64-hex-character id."""
    return hashlib.sha256(seed.encode()).hexdigest()


def make_bundle(
    repo: str,
    seed: str = "",
    *,
    bundle_id: str | None = None,
    parents: tuple[str, ...] = (),
    created_ns: int = 1_000,
    message: str = "a message",
) -> BundleRecord:
    bid = bundle_id or hex_id(f"{repo}/{seed}/{created_ns}")
    return BundleRecord(
        id=bid,
        repo=repo,
        tree=hex_id(f"tree/{bid}"),
        parents=parents,
        message=message,
        contributor_name="Test User",
        contributor_email="test@example.com",
        created_ns=created_ns,
        file_count=3,
        total_size=12_345,
        record=b"record:" + bid.encode(),
    )
