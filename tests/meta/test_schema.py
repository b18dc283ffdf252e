"""Schema creation and migrations, opening errors, and import cost."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from datamon.errors import SchemaTooNew, StoreUnavailable
from datamon.meta import migrate
from datamon.meta.schema import metadata
from datamon.meta.store import MetadataStore
from tests.meta import _race


def _version(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.text("SELECT version_num FROM alembic_version"))]
    finally:
        engine.dispose()


def test_fresh_database_is_at_head(meta_url: str) -> None:
    MetadataStore(meta_url).close()
    assert _version(meta_url) == [migrate.HEAD_REVISION]


def test_opening_twice_is_fine(meta_url: str) -> None:
    a = MetadataStore(meta_url)
    a.create_repo("r")
    b = MetadataStore(meta_url)
    assert [r.name for r in b.list_repos()] == ["r"]
    a.close()
    b.close()


def test_known_revisions_match_migration_files() -> None:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    assert scripts.get_heads() == [migrate.HEAD_REVISION]
    in_order = [s.revision for s in scripts.walk_revisions("base", "heads")][::-1]
    assert tuple(in_order) == migrate.KNOWN_REVISIONS


def test_migrations_create_the_schema_the_store_uses(meta_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    MetadataStore(meta_url).close()
    engine = sa.create_engine(meta_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
            assert diff == []
            if conn.dialect.name == "sqlite":
                ddl = conn.execute(sa.text("SELECT sql FROM sqlite_master WHERE name = 'objects'")).scalar()
                assert "WITHOUT ROWID" in str(ddl)
    finally:
        engine.dispose()


def test_downgrade_and_upgrade_again(meta_url: str) -> None:
    from alembic import command

    MetadataStore(meta_url).close()
    engine = sa.create_engine(meta_url)
    try:
        with engine.begin() as conn:
            command.downgrade(migrate.alembic_config(conn), "base")
        with engine.connect() as conn:
            assert migrate.current_revision(conn) is None
            assert not conn.dialect.has_table(conn, "repos")
    finally:
        engine.dispose()
    MetadataStore(meta_url).close()
    assert _version(meta_url) == [migrate.HEAD_REVISION]


def test_newer_schema_is_refused(meta_url: str) -> None:
    MetadataStore(meta_url).close()
    engine = sa.create_engine(meta_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(SchemaTooNew) as err:
        MetadataStore(meta_url)
    assert "schema version 9999" in str(err.value)
    assert "pip install -U datamon" in err.value.hint


def test_concurrent_first_open(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh' / 'meta.db'}"
    ctx = multiprocessing.get_context("spawn")
    n = 3
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_race.open_worker, args=(url, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert outcomes == ["ok"] * n
    assert _version(url) == [migrate.HEAD_REVISION]


def test_memory_database() -> None:
    s = MetadataStore("sqlite://")
    s.create_repo("r")
    assert s.get_repo("r").name == "r"
    s.close()


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "mysql://user:pw@localhost/db",
        "postgresql+nosuchdriver://user:pw@localhost/db",
    ],
)
def test_bad_urls_are_unavailable(url: str) -> None:
    with pytest.raises(StoreUnavailable) as err:
        MetadataStore(url)
    assert err.value.hint


def test_unreachable_server_masks_password() -> None:
    pytest.importorskip("psycopg")
    url = "postgresql+psycopg://datamon:s3cret@127.0.0.1:1/meta?connect_timeout=2"
    with pytest.raises(StoreUnavailable) as err:
        MetadataStore(url)
    message = str(err.value)
    assert "s3cret" not in message
    assert "datamon:***@127.0.0.1:1/meta" in message
    assert "datamon context get" in message


def test_unwritable_sqlite_path(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StoreUnavailable):
        MetadataStore(f"sqlite:///{tmp_path / 'afile' / 'meta.db'}")


def test_url_is_masked(meta_url: str) -> None:
    s = MetadataStore(meta_url)
    assert s.url == sa.make_url(meta_url).render_as_string(hide_password=True)
    s.close()


def test_importing_the_store_does_not_import_alembic() -> None:
    code = (
        "import sys, datamon.meta.store; "
        "bad = [m for m in sys.modules if m.split('.')[0] == 'alembic' or m.startswith('sqlalchemy.orm')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_opening_an_up_to_date_store_does_not_import_alembic(meta_url: str) -> None:
    MetadataStore(meta_url).close()
    code = (
        "import sys; from datamon.meta.store import MetadataStore; "
        f"MetadataStore({meta_url!r}).close(); "
        "sys.exit(1 if 'alembic' in sys.modules else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
