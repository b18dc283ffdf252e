"""Fixtures for trust tests that need a store on SQLite and on PostgreSQL."""

from tests.query.conftest import store  # noqa: F401  (context on SQLite or the real PostgreSQL server)
