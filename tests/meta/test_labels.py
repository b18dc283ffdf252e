"""Contract tests: labels, compare-and-swap moves, history, races between threads and processes."""

from __future__ import annotations

import multiprocessing
import threading

import pytest

from datamon.errors import LabelMoved, NotFound
from datamon.meta.records import BundleRecord
from datamon.meta.store import ANY, MetadataStore
from tests.meta import _race
from tests.meta.factories import hex_id, make_bundle


@pytest.fixture
def three(store: MetadataStore) -> list[BundleRecord]:
    store.create_repo("r")
    made = [make_bundle("r", str(i), created_ns=i) for i in range(3)]
    for b in made:
        store.add_bundle(b)
    return made


def test_set_get_list(store: MetadataStore, three: list[BundleRecord]) -> None:
    a, b, _ = three
    set_ = store.set_label("r", "prod", a.id, contributor="alice")
    assert (set_.repo, set_.name, set_.bundle_id, set_.contributor) == ("r", "prod", a.id, "alice")
    assert store.get_label("r", "prod") == set_
    store.set_label("r", "dev", b.id)
    store.set_label("r", "beta", b.id)
    assert [(lb.name, lb.bundle_id) for lb in store.list_labels("r")] == [
        ("beta", b.id),
        ("dev", b.id),
        ("prod", a.id),
    ]
    assert store.labels_by_bundle("r") == {a.id: ["prod"], b.id: ["beta", "dev"]}


def test_set_unconditionally_moves(store: MetadataStore, three: list[BundleRecord]) -> None:
    a, b, _ = three
    store.set_label("r", "prod", a.id)
    store.set_label("r", "prod", b.id, expected=ANY)
    assert store.get_label("r", "prod").bundle_id == b.id


def test_compare_and_swap(store: MetadataStore, three: list[BundleRecord]) -> None:
    a, b, c = three
    store.set_label("r", "prod", a.id, expected=None)
    store.set_label("r", "prod", b.id, expected=a.id)
    with pytest.raises(LabelMoved) as err:
        store.set_label("r", "prod", c.id, expected=a.id)
    assert (err.value.expected, err.value.current) == (a.id, b.id)
    assert err.value.exit_code == 3
    assert b.id in str(err.value)
    assert store.get_label("r", "prod").bundle_id == b.id


def test_expected_none_on_existing_label_conflicts(store: MetadataStore, three: list[BundleRecord]) -> None:
    a, b, _ = three
    store.set_label("r", "prod", a.id)
    with pytest.raises(LabelMoved) as err:
        store.set_label("r", "prod", b.id, expected=None)
    assert (err.value.expected, err.value.current) == (None, a.id)


def test_expected_id_on_missing_label_conflicts(store: MetadataStore, three: list[BundleRecord]) -> None:
    a, b, _ = three
    with pytest.raises(LabelMoved) as err:
        store.set_label("r", "prod", b.id, expected=a.id)
    assert err.value.current is None
    with pytest.raises(NotFound):
        store.get_label("r", "prod")


def test_set_label_needs_bundle_in_repo(store: MetadataStore, three: list[BundleRecord]) -> None:
    with pytest.raises(NotFound, match="bundle"):
        store.set_label("r", "prod", hex_id("missing"))
    store.create_repo("other")
    with pytest.raises(NotFound):
        store.set_label("other", "prod", three[0].id)
    with pytest.raises(NotFound, match="repo"):
        store.set_label("nope", "prod", three[0].id)
    with pytest.raises(TypeError):
        store.set_label("r", "prod", three[0].id, expected=42)


def test_get_label_not_found(store: MetadataStore, three: list[BundleRecord]) -> None:
    with pytest.raises(NotFound) as err:
        store.get_label("r", "prod")
    assert "datamon label list --repo r" in err.value.hint
    with pytest.raises(NotFound, match="repo 'nope'"):
        store.get_label("nope", "prod")


def test_history_newest_first(store: MetadataStore, three: list[BundleRecord]) -> None:
    a, b, c = three
    store.set_label("r", "prod", a.id, contributor="u1")
    store.set_label("r", "prod", b.id, expected=a.id, contributor="u2")
    store.set_label("r", "dev", c.id, contributor="u3")
    store.delete_label("r", "prod", contributor="u4")

    hist = store.label_history("r", "prod")
    assert [(e.old_bundle_id, e.new_bundle_id, e.contributor) for e in hist] == [
        (b.id, None, "u4"),
        (a.id, b.id, "u2"),
        (None, a.id, "u1"),
    ]
    assert all(e.repo == "r" and e.name == "prod" for e in hist)
    assert [e.time_ns for e in hist] == sorted((e.time_ns for e in hist), reverse=True)
    assert [e.name for e in store.label_history("r")] == ["prod", "dev", "prod", "prod"]
    assert store.label_history("r", "never") == []


def test_delete_label(store: MetadataStore, three: list[BundleRecord]) -> None:
    store.set_label("r", "prod", three[0].id)
    store.delete_label("r", "prod")
    with pytest.raises(NotFound):
        store.get_label("r", "prod")
    with pytest.raises(NotFound):
        store.delete_label("r", "prod")
    # A deleted label can be created again with expected=None.
    store.set_label("r", "prod", three[1].id, expected=None)


def test_threads_race_on_one_label(store: MetadataStore, three: list[BundleRecord]) -> None:
    base, *rivals = three
    for _round in range(10):
        store.set_label("r", "prod", base.id)
        barrier = threading.Barrier(len(rivals))
        outcomes: list[tuple[str, str | None]] = []

        def race(bundle_id: str, barrier: threading.Barrier = barrier, out: list = outcomes) -> None:
            barrier.wait(timeout=30)
            try:
                store.set_label("r", "prod", bundle_id, expected=base.id)
                out.append(("won", bundle_id))
            except LabelMoved as e:
                out.append(("moved", e.current))

        threads = [threading.Thread(target=race, args=(b.id,)) for b in rivals]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        winners = [bid for kind, bid in outcomes if kind == "won"]
        losers = [cur for kind, cur in outcomes if kind == "moved"]
        assert len(winners) == 1 and len(losers) == 1, outcomes
        assert losers == winners
        assert store.get_label("r", "prod").bundle_id == winners[0]


def test_processes_race_on_one_label(meta_url: str, store: MetadataStore, three: list[BundleRecord]) -> None:
    base, *rivals = three
    store.set_label("r", "prod", base.id)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(rivals))
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_race.set_label_worker, args=(meta_url, b.id, base.id, barrier, results))
        for b in rivals
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    winners = [bid for kind, bid in outcomes if kind == "won"]
    losers = [cur for kind, cur in outcomes if kind == "moved"]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    assert losers == winners
    assert store.get_label("r", "prod").bundle_id == winners[0]
    # Exactly one move after the initial set made it into the history.
    assert [e.new_bundle_id for e in store.label_history("r", "prod")] == [winners[0], base.id]
