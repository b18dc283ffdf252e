"""Helpers for the LFS tests."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest

import datamon
from datamon.api.context import Context


def oid_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def lines(*msgs: dict[str, Any] | str) -> io.BytesIO:
    """An in-memory stdin holding these requests, one per line."""
    return io.BytesIO(b"".join((m if isinstance(m, str) else json.dumps(m)).encode() + b"\n" for m in msgs))


def replies(out: io.BytesIO) -> list[dict[str, Any]]:
    raw = out.getvalue()
    assert raw == b"" or raw.endswith(b"\n")
    return [json.loads(line) for line in raw.splitlines()]


@pytest.fixture
def ctx() -> Iterator[Context]:
    """The embedded default context (under the test's DATAMON_HOME) with repo ``proj``."""
    with datamon.connect() as c:
        c.create_repo("proj")
        yield c
