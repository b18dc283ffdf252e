"""The metadata store on a real PostgreSQL server, where a team's uploaders meet.

The contract suite (``tests/meta``) runs on PostgreSQL too; these are the properties that only matter
with many clients: batched index lookups, racing index writers, the connection pool, and a server
restart under a live pool.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event

from datamon.errors import StoreUnavailable
from datamon.meta.base import BATCH
from datamon.meta.migrate import HEAD_REVISION, current_revision
from datamon.meta.store import MetadataStore
from tests.meta import _race
from tests.teams.conftest import PgInstance


def key(i: int) -> bytes:
    return hashlib.blake2s(i.to_bytes(8, "big")).digest()


def pack_name(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


@pytest.fixture
def pg_store(postgres_url: str) -> Iterator[MetadataStore]:
    s = MetadataStore(postgres_url)
    yield s
    s.close()


def _statements(store: MetadataStore) -> list[str]:
    seen: list[str] = []

    @event.listens_for(store._engine, "before_cursor_execute")
    def _count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    return seen


def test_lookup_objects_is_batched(pg_store: MetadataStore) -> None:
    pg_store.add_pack(pack_name("p"), 1, [(key(i), i, 1, 1, 0, 0) for i in range(1_600)])
    statements = _statements(pg_store)
    wanted = [key(i) for i in range(1_000, 2_200)] * 2  # 1,200 distinct keys, 600 of them indexed
    found = pg_store.lookup_objects(wanted)
    assert set(found) == {key(i) for i in range(1_000, 1_600)}
    assert found[key(1_234)][1:3] == (pack_name("p"), 1_234)
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == -(-1_200 // BATCH)  # one query per batch of keys, not one per key


def test_racing_index_writers_do_not_deadlock(postgres_url: str) -> None:
    """Uploaders that stored the same chunks index them at the same moment, in different orders."""
    shared = [(key(i), i, 1, 1, 0, 0) for i in range(3_000)]
    writers = 6
    stores = [MetadataStore(postgres_url) for _ in range(writers)]
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(n: int) -> None:
        entries = list(shared) + [(key(10_000 + n * 100 + i), i, 1, 1, 0, 0) for i in range(100)]
        random.Random(n).shuffle(entries)
        try:
            barrier.wait(30)
            for part in range(3):  # several packs each, as a real upload writes them
                stores[n].add_pack(pack_name(f"{n}/{part}"), 1, entries[part::3])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert not errors, errors
        assert stores[0].count_objects() == 3_000 + writers * 100
        assert len(stores[0].list_packs()) == writers * 3
    finally:
        for s in stores:
            s.close()


def test_concurrent_first_open_migrates_once(postgres_url: str) -> None:
    """Several hosts pointed at a new, empty database at the same moment: one migrates, all work."""
    ctx = multiprocessing.get_context("spawn")
    n = 3
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_race.open_worker, args=(postgres_url, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert outcomes == ["ok"] * n
    store = MetadataStore(postgres_url)
    try:
        with store._engine.connect() as conn:
            assert current_revision(conn) == HEAD_REVISION
    finally:
        store.close()


def _connections(store: MetadataStore, database: str) -> int:
    """Open connections to ``database`` (``store`` is connected to another one)."""
    from sqlalchemy import text

    with store._engine.connect() as conn:
        n = conn.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d"), {"d": database}
        ).scalar_one()
    return int(n)


def test_pool_is_bounded_and_released(postgres_url: str, postgres_server: str) -> None:
    database = postgres_url.rsplit("/", 1)[1]
    store = MetadataStore(postgres_url, pool_size=3)
    observer = MetadataStore(postgres_server)
    store.add_pack(pack_name("p"), 1, [(key(i), i, 1, 1, 0, 0) for i in range(2_000)])
    # Count open DBAPI connections on the client side: exact at every instant. (The server's
    # pg_stat_activity lists a backend a moment after its client closed it, so sampling it while the
    # pool replaces an overflow connection can count one connection twice on a loaded machine.)
    from sqlalchemy import event

    open_now, peak = [0], [0]
    lock = threading.Lock()

    def opened(*_a: object) -> None:
        with lock:
            open_now[0] += 1
            peak[0] = max(peak[0], open_now[0])

    def closed(*_a: object) -> None:
        with lock:
            open_now[0] -= 1

    event.listen(store._engine, "connect", opened)
    event.listen(store._engine, "close", closed)
    event.listen(store._engine, "close_detached", closed)
    barrier = threading.Barrier(24)
    errors: list[BaseException] = []

    def hammer(n: int) -> None:
        try:
            barrier.wait(30)
            for _ in range(20):
                assert len(store.lookup_objects([key(i) for i in range(n, 2_000, 7)])) > 0
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(24)]
    for t in threads:
        t.start()
    server_seen = 0
    while any(t.is_alive() for t in threads):
        server_seen = max(server_seen, _connections(observer, database))
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        limit = store._engine.pool.size() + store._engine.pool._max_overflow  # type: ignore[attr-defined]
        assert 1 <= peak[0] <= limit and server_seen >= 1
        store.close()
        deadline = time.monotonic() + 10  # a backend leaves pg_stat_activity a moment after its client
        while _connections(observer, database) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _connections(observer, database) == 0
    finally:
        store.close()
        observer.close()


def test_pooled_connections_survive_a_server_restart(pg_instance: PgInstance) -> None:
    store = MetadataStore(pg_instance.create_database())
    try:
        store.create_repo("r")
        # Fill the pool with several open connections, then cut them all.
        barrier = threading.Barrier(4)

        def use() -> None:
            barrier.wait(10)
            store.list_repos()

        threads = [threading.Thread(target=use) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        pg_instance.restart()
        # pool_pre_ping notices the dead connections and reconnects: no error reaches the caller.
        assert [r.name for r in store.list_repos()] == ["r"]
        store.create_repo("s")
        assert store.get_repo("s").name == "s"

        pg_instance.stop()
        with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{pg_instance.port}"):
            store.list_repos()
        pg_instance.start()
        assert [r.name for r in store.list_repos()] == ["r", "s"]
    finally:
        store.close()


@pytest.mark.parametrize("query, expected", [("", "10"), ("?connect_timeout=3", "3")])
def test_connect_timeout(postgres_url: str, query: str, expected: str) -> None:
    """libpq would wait forever on a host that drops packets; datamon bounds it (the URL may override)."""
    store = MetadataStore(postgres_url + query)
    try:
        with store._engine.connect() as conn:
            dsn = conn.connection.dbapi_connection.info.dsn  # type: ignore[union-attr]
        assert f"connect_timeout={expected}" in dsn
    finally:
        store.close()
