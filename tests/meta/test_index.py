"""Contract tests: the object index and pack list, LFS ids, gc locks."""

from __future__ import annotations

import hashlib
import itertools
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datamon.errors import NotFound
from datamon.meta.records import PackEntry
from datamon.meta.store import MetadataStore
from tests.meta.factories import hex_id


def key(i: int) -> bytes:
    return hashlib.blake2s(i.to_bytes(8, "big")).digest()


def entries(start: int, n: int) -> list[PackEntry]:
    return [(key(i), i * 100, 100, 250, i % 3, i % 2) for i in range(start, start + n)]


P1, P2 = hex_id("pack1"), hex_id("pack2")


def test_add_pack_and_lookup_many(store: MetadataStore) -> None:
    store.add_pack(P1, 123_456, entries(0, 1_200))
    wanted = [key(i) for i in range(1_100, 1_300)] + [key(i) for i in range(0, 1_000)]
    found = store.lookup_objects(wanted)
    assert set(found) == {key(i) for i in range(1_200)} - {key(i) for i in range(1_000, 1_100)}
    assert found[key(7)] == (key(7), P1, 700, 100, 250, 1, 1)
    assert store.lookup_objects([]) == {}
    assert store.count_objects() == 1_200
    assert store.list_packs()[0].name == P1
    assert (store.list_packs()[0].size, store.list_packs()[0].object_count) == (123_456, 1_200)


def test_duplicate_keys_keep_first_row(store: MetadataStore) -> None:
    store.add_pack(P1, 10, entries(0, 5))
    store.add_pack(P2, 20, [(key(3), 9_999, 1, 1, 0, 0), (key(99), 0, 1, 1, 0, 0), (key(99), 5, 1, 1, 0, 0)])
    found = store.lookup_objects([key(3), key(99)])
    assert found[key(3)][1:3] == (P1, 300)
    assert found[key(99)][1] == P2
    assert store.count_objects() == 6
    # Re-adding a pack is idempotent.
    store.add_pack(P1, 10, entries(0, 5))
    assert store.count_objects() == 6
    assert [p.name for p in store.list_packs()] == sorted([P1, P2])


def test_objects_in_pack_and_removal(store: MetadataStore) -> None:
    store.add_pack(P1, 10, entries(0, 600))
    store.add_pack(P2, 10, entries(600, 10))
    rows = store.objects_in_pack(P2)
    assert [r[0] for r in rows] == [key(i) for i in range(600, 610)]
    assert store.objects_in_pack(hex_id("unknown")) == []

    store.remove_objects([key(i) for i in range(0, 550)] + [key(10_000)])
    assert store.count_objects() == 60
    assert store.lookup_objects([key(0), key(599)]) == {key(599): (key(599), P1, 59_900, 100, 250, 2, 1)}

    store.remove_pack(P1)
    store.remove_pack(P1)
    assert [p.name for p in store.list_packs()] == [P2]
    assert store.count_objects() == 10


def test_add_pack_and_lookup_at_scale(store: MetadataStore) -> None:
    """100k rows in one add_pack, 10k keys in one lookup (batched). Speed is measured in
    benchmarks, not asserted here: the machines running tests are shared and noisy."""
    many = entries(0, 100_000)
    store.add_pack(P1, 1, many)
    assert store.count_objects() == 100_000
    found = store.lookup_objects([e[0] for e in many[::10]])
    assert len(found) == 10_000


_namespaces = itertools.count(1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    packs=st.lists(
        st.lists(st.tuples(st.integers(0, 40), st.integers(0, 2**40)), max_size=30), min_size=1, max_size=4
    )
)
def test_index_keeps_first_writer(store: MetadataStore, packs: list[list[tuple[int, int]]]) -> None:
    # The store outlives one example: give each example keys and pack names of its own.
    ns = next(_namespaces) * 1_000
    model: dict[bytes, tuple[str, int]] = {}
    for n, items in enumerate(packs):
        name = hex_id(f"{ns}/{n}")
        store.add_pack(name, 1, [(key(ns + k), off, 1, 1, 0, 0) for k, off in items])
        for k, off in items:
            model.setdefault(key(ns + k), (name, off))
    found = store.lookup_objects([key(ns + k) for k in range(41)])
    assert {k: (r[1], r[2]) for k, r in found.items()} == model


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    packs=st.lists(
        st.lists(st.tuples(st.integers(0, 40), st.integers(0, 2**40)), max_size=30), min_size=1, max_size=4
    )
)
def test_add_packs_keeps_first_writer(store: MetadataStore, packs: list[list[tuple[int, int]]]) -> None:
    """``add_packs`` (one transaction for several packs) indexes like ``add_pack`` called for
    each pack in turn: a key keeps its first pack's first entry."""
    ns = next(_namespaces) * 1_000
    model: dict[bytes, tuple[str, int]] = {}
    batch = []
    for n, items in enumerate(packs):
        name = hex_id(f"{ns}/{n}")
        batch.append((name, 1, [(key(ns + k), off, 1, 1, 0, 0) for k, off in items]))
        for k, off in items:
            model.setdefault(key(ns + k), (name, off))
    store.add_packs(batch)
    found = store.lookup_objects([key(ns + k) for k in range(41)])
    assert {k: (r[1], r[2]) for k, r in found.items()} == model
    assert {p.name for p in store.list_packs()} >= {name for name, _, _ in batch}
    # the same keys again, in other packs (another uploader's): the indexed rows stay
    again = [(hex_id(f"{ns}/again/{n}"), 1, entries) for n, (_, _, entries) in enumerate(batch)]
    store.add_packs([*again, (hex_id(f"{ns}/extra"), 1, [(key(ns + 99), 7, 1, 1, 0, 0)])])
    found = store.lookup_objects([key(ns + k) for k in [*range(41), 99]])
    assert {k: (r[1], r[2]) for k, r in found.items()} == {**model, key(ns + 99): (hex_id(f"{ns}/extra"), 7)}


def test_lfs_objects(store: MetadataStore) -> None:
    store.create_repo("r")
    store.create_repo("s")
    oid = hashlib.sha256(b"x").hexdigest()
    assert store.get_lfs_object("r", oid) is None
    store.put_lfs_object("r", oid, hex_id("f1"), 10)
    store.put_lfs_object("r", oid, hex_id("f1"), 10)
    assert store.get_lfs_object("r", oid) == (hex_id("f1"), 10)
    assert store.get_lfs_object("s", oid) is None
    store.put_lfs_object("r", oid, hex_id("f2"), 11)
    assert store.get_lfs_object("r", oid) == (hex_id("f2"), 11)
    assert store.get_lfs_object("nope", oid) is None
    with pytest.raises(NotFound):
        store.put_lfs_object("nope", oid, hex_id("f1"), 10)


def test_locks(store: MetadataStore) -> None:
    hour = 3600 * 10**9
    assert store.try_lock("gc", "host-a:1", hour)
    assert not store.try_lock("gc", "host-b:2", hour)
    assert store.try_lock("gc", "host-a:1", hour)  # ours: refreshed
    assert store.try_lock("other", "host-b:2", hour)
    store.unlock("gc", "host-b:2")  # not the holder: no effect
    assert not store.try_lock("gc", "host-b:2", hour)
    store.unlock("gc", "host-a:1")
    assert store.try_lock("gc", "host-b:2", hour)


def test_stale_lock_is_taken_over(store: MetadataStore) -> None:
    assert store.try_lock("gc", "crashed", 10**15)
    time.sleep(0.01)
    assert not store.try_lock("gc", "new", 10**15)
    assert store.try_lock("gc", "new", 1_000_000)  # older than 1 ms: stale
    assert not store.try_lock("gc", "crashed", 10**15)
