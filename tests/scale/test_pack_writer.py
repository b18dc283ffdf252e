"""``PackWriter`` at scale: batched claims and writes, index rows committed in the order packs
were sealed (several packs per transaction), nothing remembered per object once indexed."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from datamon.cas import objects as objects_mod
from datamon.cas.blobstore import open_blobstore
from datamon.cas.hashing import key_of
from datamon.cas.objects import PackWriter
from datamon.cas.pack import Kind, pack_blob_name, read_index


class Index:
    """An in-memory object index recording the order rows were committed in."""

    def __init__(self) -> None:
        self.rows: dict[bytes, tuple[str, int]] = {}
        self.commits: list[list[str]] = []

    def lookup_objects(self, keys: Sequence[bytes]) -> dict[bytes, Any]:
        return {k: (k, *self.rows[k], 1, 1, 1, 0) for k in keys if k in self.rows}

    def add_pack(self, name: str, size: int, entries: Sequence[Any], **kw: Any) -> None:
        self.add_packs([(name, size, entries)])

    def add_packs(self, packs: Sequence[tuple[str, int, Sequence[Any]]]) -> None:
        self.commits.append([name for name, _, _ in packs])
        for name, _, entries in packs:
            for e in entries:
                self.rows.setdefault(e[0], (name, e[1]))


class SlowFirstPut:
    """A blob store whose first pack upload is slow (or fails): later packs land first."""

    def __init__(self, url: str, fail: bool = False) -> None:
        self.inner = open_blobstore(url)
        self.fail = fail
        self.first = True
        self.landed: list[str] = []
        self._lock = threading.Lock()

    def put(self, name: str, data: bytes) -> None:
        with self._lock:
            first, self.first = self.first, False
        if first:
            time.sleep(0.5)
            if self.fail:
                raise OSError(5, "the first pack could not be written")
        self.inner.put(name, data)
        with self._lock:
            self.landed.append(name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _objects(n: int, size: int = 3000) -> list[tuple[bytes, bytes, int, int, int]]:
    out = []
    for i in range(n):
        raw = os.urandom(size - 8) + i.to_bytes(8, "little")
        out.append((key_of(raw), raw, len(raw), int(Kind.CHUNK), 0))
    return out


def test_rows_commit_in_sealing_order_in_batches(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(objects_mod, "COMMIT_ROWS", 40)
    blobs = SlowFirstPut((tmp_path / "blobs").as_uri())
    index = Index()
    w = PackWriter(blobs, index, pack_size=30_000)
    items = _objects(200)
    for i in range(0, len(items), 7):
        batch = items[i : i + 7]
        claimed = w.claim_many(k for k, *_ in batch)
        assert claimed == [k for k, *_ in batch]
        w.write_stored_many(batch)
    w.flush()
    sealed = [name for commit in index.commits for name in commit]
    assert len(sealed) == w.packs_written >= 10
    assert blobs.landed[0] != pack_blob_name(sealed[0])  # the first pack landed after later ones...
    assert sorted(blobs.landed) == sorted(pack_blob_name(n) for n in sealed)
    # ...yet rows were committed in sealing order, several packs at a time
    offsets = {}
    for name in sealed:
        entries = read_index(blobs.get(pack_blob_name(name)))
        offsets[name] = [e.key for e in entries]
    order = [k for name in sealed for k in offsets[name]]
    assert order == [k for k, *_ in items]
    assert max(len(c) for c in index.commits) > 1
    assert set(index.rows) == {k for k, *_ in items}
    assert not w._claimed  # nothing remembered per object once indexed
    w.close()


def test_a_failed_pack_keeps_later_packs_out_of_the_index(tmp_path: Any) -> None:
    blobs = SlowFirstPut((tmp_path / "blobs").as_uri(), fail=True)
    index = Index()
    w = PackWriter(blobs, index, pack_size=30_000)
    items = _objects(60)
    w.claim_many(k for k, *_ in items)
    w.write_stored_many(items)
    with pytest.raises(OSError, match="could not be written"):
        w.flush()
    assert blobs.landed  # later packs did land...
    assert not index.rows  # ...but none of their rows: they would come before the first pack's
    w.close()


def test_claims_are_given_back_for_indexed_keys(tmp_path: Any) -> None:
    index = Index()
    w = PackWriter(open_blobstore((tmp_path / "b").as_uri()), index)
    a, b = os.urandom(32), os.urandom(32)
    assert w.claim_many([a, b, a]) == [a, b]
    assert w.claim_many([a]) == []
    w.unclaim_present([a])
    assert w.claim_many([a]) == []  # known to be indexed now
    assert w.is_claimed(a) and w.is_claimed(b)
    w.close()
