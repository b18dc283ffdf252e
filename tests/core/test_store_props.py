"""Hypothesis properties of the content store: what is put comes back, byte for byte, under its BLAKE3."""

from __future__ import annotations

import io
import tempfile
import uuid
from pathlib import Path

from blake3 import blake3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datamon.cas.blobstore import open_blobstore
from datamon.cas.chunker import ChunkerParams
from datamon.cas.store import ContentStore
from datamon.meta.store import MetadataStore

# Small chunks so that a few KiB already make multi-chunk files with file maps; tiny packs
# so that one example spans several packs.
SMALL = ChunkerParams(min_size=256, avg_size=1024, max_size=4096)

# Files: mostly random bytes, some repeated and some compressible, sizes around the chunk sizes.
file_bytes = st.one_of(
    st.binary(max_size=12_000),
    st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=64), st.integers(1, 300)),
)


def _store(tmp: Path) -> tuple[ContentStore, MetadataStore]:
    meta = MetadataStore(f"sqlite:///{tmp / 'meta.db'}")
    blobs = open_blobstore(f"memory://props-{uuid.uuid4().hex}")
    return ContentStore(blobs, meta, pack_size=8 << 10, chunker_default=SMALL), meta


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.lists(file_bytes, max_size=12), streamed=st.booleans())
def test_put_then_get_returns_the_same_bytes(files: list[bytes], streamed: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cas, meta = _store(Path(tmp))
        try:
            with cas.writing() as ing:
                if streamed:
                    results = [ing.ingest_stream(io.BytesIO(data)) for data in files]
                else:
                    results = ing.ingest_buffers(files)
            for data, r in zip(files, results, strict=True):
                assert r.key == blake3(data).digest()  # a file's key is what b3sum prints
                assert r.size == len(data)
                assert b"".join(cas.iter_file(r.key, r.size)) == data
                f = cas.open_file(r.key, r.size)
                if data:  # a random-access read in the middle
                    mid = len(data) // 2
                    assert f.pread(len(data) - mid + 3, mid) == data[mid:]
            # Putting the same files again stores nothing new.
            with cas.writing() as ing:
                again = ing.ingest_buffers(files)
            assert [r.key for r in again] == [r.key for r in results]
            assert sum(r.new_bytes for r in again) == 0
        finally:
            meta.close()
