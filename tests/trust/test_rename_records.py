"""Rename records (``renames/<id>`` in the blob store) are hostile input to ``admin reindex``: only a
canonical record that hashes to its name, and that names a repo by its name *and* creation time,
is replayed; everything else is reported and left alone."""

from __future__ import annotations

import json

from datamon.api.context import connect
from datamon.api.rename import RENAME_BLOB_PREFIX, decode_rename, encode_rename
from datamon.cas.hashing import key_of
from datamon.meta.rewrites import RenameEvent


def _put(ctx, raw: bytes, name: str | None = None) -> str:  # type: ignore[no-untyped-def]
    rid = name or key_of(raw).hex()
    ctx.cas.blobs.put(RENAME_BLOB_PREFIX + rid, raw)
    return rid


def _canonical(d: dict[str, object]) -> bytes:
    return json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_forged_rename_records_are_not_replayed(dm) -> None:  # type: ignore[no-untyped-def]
    assert dm("repo", "create", "--repo", "a").code == 0
    ctx = connect()
    created = ctx.meta.get_repo("a").created_ns
    good = encode_rename(RenameEvent("b", "a", "b", created + 1, "x <x@y>", created))
    fields = json.loads(good.raw)
    _put(ctx, good.raw, "ab" * 32)  # does not hash to its name
    _put(ctx, good.raw.replace(b'"to":"b"', b'"to": "b"'))  # not canonical
    _put(ctx, _canonical({**fields, "to": "bad/name"}))  # a name no repo may have
    _put(ctx, _canonical({**fields, "extra": 1}))  # unknown key
    _put(ctx, _canonical({**fields, "time_ns": True}))  # wrong type
    _put(ctx, b"\xff" * 100)  # not UTF-8
    _put(ctx, _canonical({**fields, "repo_created_ns": created - 1}))  # another repo of that name
    r = dm("admin", "reindex", "--json")
    assert r.code == 0, r
    rep = json.loads(r.out)
    assert rep["replayed_renames"] == 0 and rep["renames"] == 1, rep  # only the last one decodes
    assert len([p for p in rep["problems"] if p.startswith("rename record")]) == 6, rep
    assert [x.name for x in ctx.meta.list_repos()] == ["a"]
    assert decode_rename(good.raw, good.id) == good


def test_an_honest_record_for_an_older_database_is_replayed(dm) -> None:  # type: ignore[no-untyped-def]
    assert dm("repo", "create", "--repo", "a").code == 0
    ctx = connect()
    created = ctx.meta.get_repo("a").created_ns
    _put(ctx, encode_rename(RenameEvent("b", "a", "b", created + 1, "x <x@y>", created)).raw)
    r = dm("admin", "reindex")
    assert r.code == 0 and "replayed repo rename a -> b" in r.err, r
    assert [x.name for x in ctx.meta.list_repos()] == ["b"]
