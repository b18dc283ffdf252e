"""Shared pieces of the CAS trust tests (no tests here): small-chunk stores, forged bundles."""

from __future__ import annotations

import json
import random
from pathlib import Path

from datamon.api.context import Context
from datamon.cas.hashing import key_of
from datamon.cas.tree import EntryKind, TreeEntry, encode_tree
from tests.integrity.helpers import open_ctx
from tests.trust.forge import RawEntry, put_bundle, put_chunk, put_objects, put_tree

KiB = 1024
# Small chunks keep multi-chunk files small: 16 KiB .. 64 KiB .. 128 KiB.
SMALL = {"min_size": 16 * KiB, "avg_size": 64 * KiB, "max_size": 128 * KiB}


def small_ctx(root: Path, **kw: object) -> Context:
    """``open_ctx`` on a store created with small chunker settings."""
    blobs = root / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    cfg = blobs / "datamon-store.json"
    if not cfg.exists():
        cfg.write_text(json.dumps({"chunker": SMALL, "format": 1}, sort_keys=True))
    ctx = open_ctx(root, **kw)
    if not any(r.name == "r" for r in ctx.list_repos()):
        ctx.create_repo("r")
    return ctx


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def store_file(ctx: Context, data: bytes) -> tuple[bytes, list[tuple[bytes, int]]]:
    """Store ``data`` honestly (through an ingest session); (file key, chunk list)."""
    with ctx.cas.writing() as ing:
        r = ing.ingest_buffers([data])[0]
    return r.key, ctx.cas.file_chunks(r.key, len(data))


def bundle_of(ctx: Context, entries: list[RawEntry]) -> str:
    """A bundle (repo ``r``) whose root tree holds ``entries`` as given; returns its id."""
    root = put_tree(ctx, entries)
    size = sum(e.size for e in entries if e.kind == 1)
    return put_bundle(ctx, "r", root, files=len(entries), size=size).id


def file_entry(name: str, key: bytes, size: int) -> RawEntry:
    return RawEntry(name.encode(), kind=1, size=size, key=key)


def deep_bundle(ctx: Context, depth: int, leaf: bytes) -> tuple[str, str]:
    """A bundle ``depth`` directories deep (``d/d/.../d/leaf.bin``) built bottom-up with the
    honest encoder; returns (bundle id, path of the leaf)."""
    key = put_chunk(ctx, leaf)
    tree = encode_tree([TreeEntry("leaf.bin", EntryKind.FILE, 0o644, 0, len(leaf), key)])
    objects = [(key_of(tree), tree, 3)]
    for _ in range(depth - 1):
        child = objects[-1][0]
        tree = encode_tree([TreeEntry("d", EntryKind.DIR, 0o755, 0, len(leaf), child)])
        objects.append((key_of(tree), tree, 3))
    put_objects(ctx, objects)
    b = put_bundle(ctx, "r", objects[-1][0], files=1, size=len(leaf))
    return b.id, "/".join(["d"] * (depth - 1) + ["leaf.bin"])
