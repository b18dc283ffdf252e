"""Contract tests: repos and bundles."""

from __future__ import annotations

import pytest

import datamon.meta.store as store_module
from datamon.errors import AmbiguousId, Conflict, NotFound, UsageError
from datamon.meta.store import MetadataStore
from tests.meta.factories import hex_id, make_bundle


def test_create_get_list_repos(store: MetadataStore) -> None:
    created = store.create_repo("mnist", "digits")
    assert created.name == "mnist" and created.description == "digits" and created.bundle_count == 0
    store.create_repo("cifar")
    assert store.get_repo("mnist") == created
    assert [r.name for r in store.list_repos()] == ["cifar", "mnist"]


def test_duplicate_repo_conflicts(store: MetadataStore) -> None:
    store.create_repo("mnist")
    with pytest.raises(Conflict, match="already exists") as err:
        store.create_repo("mnist", "again")
    assert "choose another name" in err.value.hint
    assert err.value.exit_code == 3


def test_missing_repo_not_found(store: MetadataStore) -> None:
    with pytest.raises(NotFound) as err:
        store.get_repo("nope")
    assert "datamon repo list" in err.value.hint
    assert err.value.exit_code == 2
    with pytest.raises(NotFound):
        store.delete_repo("nope")
    with pytest.raises(NotFound):
        store.list_bundles("nope")
    with pytest.raises(NotFound):
        store.add_bundle(make_bundle("nope"))


def test_bundle_count(store: MetadataStore) -> None:
    store.create_repo("a")
    store.create_repo("b")
    for i in range(3):
        store.add_bundle(make_bundle("a", str(i)))
    store.add_bundle(make_bundle("b"))
    assert store.get_repo("a").bundle_count == 3
    assert {r.name: r.bundle_count for r in store.list_repos()} == {"a": 3, "b": 1}


def test_delete_repo_removes_its_rows_but_not_objects(store: MetadataStore) -> None:
    store.create_repo("a")
    store.create_repo("b")
    first = make_bundle("a", "1")
    store.add_bundle(first)
    store.add_bundle(make_bundle("a", "2", parents=(first.id,)))
    keep = make_bundle("b", "1")
    store.add_bundle(keep)
    store.set_label("a", "prod", first.id)
    store.put_lfs_object("a", hex_id("oid"), hex_id("file"), 10)
    store.add_pack("p" * 64, 100, [(b"k" * 32, 0, 10, 20, 1, 1)])

    store.delete_repo("a")

    assert [r.name for r in store.list_repos()] == ["b"]
    with pytest.raises(NotFound):
        store.get_repo("a")
    assert [b.id for b in store.iter_all_bundles()] == [keep.id]
    assert store.count_objects() == 1
    # The name can be reused and starts empty.
    store.create_repo("a")
    assert store.list_bundles("a") == []
    assert store.list_labels("a") == []
    assert store.label_history("a") == []
    assert store.get_lfs_object("a", hex_id("oid")) is None


def test_add_and_get_bundle(store: MetadataStore) -> None:
    store.create_repo("r")
    parent = make_bundle("r", "p")
    child = make_bundle("r", "c", parents=(parent.id, hex_id("other")), created_ns=2_000)
    store.add_bundle(parent)
    store.add_bundle(child)
    assert store.get_bundle("r", parent.id) == parent
    got = store.get_bundle("r", child.id)
    assert got == child
    assert got.parents == (parent.id, hex_id("other"))
    assert got.record == child.record


def test_add_bundle_is_idempotent(store: MetadataStore) -> None:
    store.create_repo("r")
    b = make_bundle("r", parents=(hex_id("p"),))
    store.add_bundle(b)
    store.add_bundle(b)
    assert store.list_bundles("r") == [b]


def test_same_bundle_id_in_another_repo_conflicts(store: MetadataStore) -> None:
    store.create_repo("a")
    store.create_repo("b")
    b = make_bundle("a")
    store.add_bundle(b)
    with pytest.raises(Conflict):
        store.add_bundle(make_bundle("b", bundle_id=b.id))


def test_get_bundle_not_found(store: MetadataStore) -> None:
    store.create_repo("r")
    store.add_bundle(make_bundle("r"))
    with pytest.raises(NotFound) as err:
        store.get_bundle("r", hex_id("missing"))
    assert "datamon bundle list --repo r" in err.value.hint
    with pytest.raises(NotFound, match="repo 'other'"):
        store.get_bundle("other", hex_id("missing"))
    # A bundle of another repo is not found through this repo.
    store.create_repo("s")
    with pytest.raises(NotFound):
        store.get_bundle("s", make_bundle("r").id)


def _with_prefix(prefix: str, seed: str) -> str:
    return prefix + hex_id(seed)[len(prefix) :]


def test_resolve_bundle(store: MetadataStore) -> None:
    store.create_repo("r")
    a = make_bundle("r", bundle_id=_with_prefix("abcdef0", "a"))
    b = make_bundle("r", bundle_id=_with_prefix("abcdef1", "b"))
    c = make_bundle("r", bundle_id=_with_prefix("123456", "c"))
    for x in (a, b, c):
        store.add_bundle(x)

    assert store.resolve_bundle("r", "123456") == c
    assert store.resolve_bundle("r", "abcdef0") == a
    assert store.resolve_bundle("r", "ABCDEF1") == b  # case-insensitive
    assert store.resolve_bundle("r", a.id) == a  # a full id

    with pytest.raises(AmbiguousId) as amb:
        store.resolve_bundle("r", "abcdef")
    assert amb.value.candidates == sorted([a.id, b.id])
    assert a.id in str(amb.value) and b.id in str(amb.value)

    with pytest.raises(NotFound) as nf:
        store.resolve_bundle("r", "fedcba")
    assert "datamon bundle list --repo r" in nf.value.hint
    with pytest.raises(NotFound):
        store.resolve_bundle("r", hex_id("not there"))


@pytest.mark.parametrize("prefix", ["", "abcde", "abcdeg", "abc%ef", "a" * 65, "zzzzzzzz"])
def test_resolve_bundle_rejects_bad_prefix(store: MetadataStore, prefix: str) -> None:
    store.create_repo("r")
    with pytest.raises(UsageError) as err:
        store.resolve_bundle("r", prefix)
    assert "give at least 6 hex characters" in str(err.value)


def test_resolve_bundle_only_looks_in_its_repo(store: MetadataStore) -> None:
    store.create_repo("a")
    store.create_repo("b")
    x = make_bundle("a", bundle_id=_with_prefix("abcdef", "x"))
    y = make_bundle("b", bundle_id=_with_prefix("abcdef", "y"))
    store.add_bundle(x)
    store.add_bundle(y)
    assert store.resolve_bundle("a", "abcdef") == x
    assert store.resolve_bundle("b", "abcdef") == y


def test_list_bundles_newest_first_and_latest(store: MetadataStore) -> None:
    store.create_repo("r")
    assert store.latest_bundle("r") is None
    bundles = [make_bundle("r", str(i), created_ns=t) for i, t in enumerate([30, 10, 20])]
    tie = make_bundle("r", "tie", created_ns=30)
    for b in [*bundles, tie]:
        store.add_bundle(b)
    listed = store.list_bundles("r")
    assert [b.created_ns for b in listed] == [30, 30, 20, 10]
    assert [b.id for b in listed[:2]] == sorted([bundles[0].id, tie.id])
    assert store.list_bundles("r", limit=2) == listed[:2]
    assert store.latest_bundle("r") == listed[0]
    with pytest.raises(NotFound):
        store.latest_bundle("nope")


def test_delete_bundle_drops_labels_on_it(store: MetadataStore) -> None:
    store.create_repo("r")
    a = make_bundle("r", "a", created_ns=1)
    b = make_bundle("r", "b", parents=(a.id,), created_ns=2)
    store.add_bundle(a)
    store.add_bundle(b)
    store.set_label("r", "prod", a.id)
    store.set_label("r", "dev", b.id)

    store.delete_bundle("r", a.id, contributor="gc")

    with pytest.raises(NotFound):
        store.get_bundle("r", a.id)
    assert [lb.name for lb in store.list_labels("r")] == ["dev"]
    last = store.label_history("r", "prod")[0]
    assert (last.old_bundle_id, last.new_bundle_id, last.contributor) == (a.id, None, "gc")
    # The child keeps naming its (now deleted) parent: bundles are immutable.
    assert store.get_bundle("r", b.id).parents == (a.id,)
    with pytest.raises(NotFound):
        store.delete_bundle("r", a.id)


def test_iter_all_bundles_pages(store: MetadataStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "BATCH", 3)
    store.create_repo("a")
    store.create_repo("b")
    made = []
    for i in range(7):
        b = make_bundle("a" if i % 2 else "b", str(i), parents=(hex_id(f"p{i}"),))
        store.add_bundle(b)
        made.append(b)
    got = list(store.iter_all_bundles())
    assert sorted(got, key=lambda b: b.id) == sorted(made, key=lambda b: b.id)
    assert [b.id for b in got] == sorted(b.id for b in made)
