"""Random and mutated bundle records: what checks and decodes them for display either accepts
them or raises the integrity error (exit 4), never anything else."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from datamon.api.bundles import check_record, make_bundle
from datamon.errors import IntegrityError
from datamon.meta.records import BundleRecord, decode_record, record_mismatch

BASE = make_bundle(
    repo="r",
    tree="a" * 64,
    parents=["b" * 64],
    message="first cut \u00e9",
    contributor_name="Ada",
    contributor_email="ada@example.com",
    time_ns=1_700_000_000_000_000_000,
    file_count=3,
    total_size=42,
)


def display(b: BundleRecord) -> None:
    """What the CLI does before showing a bundle (cli.render.verified_fields)."""
    from datamon.cli.render import verified_fields

    verified_fields(b)


def _check(b: BundleRecord) -> None:
    for f in (check_record, display):
        try:
            f(b)
        except IntegrityError:
            pass
    try:
        fields = decode_record(b.record, b.id)
    except IntegrityError:
        return
    assert isinstance(record_mismatch(b, fields), list)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_record_bytes(raw: bytes) -> None:
    _check(dataclasses.replace(BASE, record=raw))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_record_bytes(data: st.DataObject) -> None:
    raw = bytearray(BASE.record)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        i = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[i] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        elif raw:
            del raw[i]
    _check(dataclasses.replace(BASE, record=bytes(raw)))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(
        sorted(["contributor", "files", "message", "parents", "repo", "size", "time_ns", "tree", "version"])
    ),
    json_values,
)
def test_fields_replaced_by_anything(key: str, value: object) -> None:
    import json

    d = json.loads(BASE.record)
    d[key] = value
    try:
        raw = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    except (UnicodeEncodeError, ValueError):
        return
    from datamon.cas.hashing import key_of

    # Hashed like an honest writer: only the decoder's checks stand between it and the display.
    _check(dataclasses.replace(BASE, id=key_of(raw).hex(), record=raw))


@settings(max_examples=200, deadline=None)
@given(
    st.text(max_size=30),
    st.text(max_size=30),
    st.integers(-(2**70), 2**70),
    st.integers(-(2**70), 2**70),
)
def test_columns_edited(message: str, name: str, files: int, created: int) -> None:
    _check(
        dataclasses.replace(
            BASE, message=message, contributor_name=name, file_count=files, created_ns=created
        )
    )


def test_the_honest_record_passes() -> None:
    display(BASE)
    assert decode_record(BASE.record, BASE.id).message == BASE.message
