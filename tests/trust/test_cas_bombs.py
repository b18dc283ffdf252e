"""zstd bombs: a small frame that declares, or expands to, far more than its index row says.
Readers fail with the integrity error naming the object, with memory bounded by the row."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

from datamon.api.verify import CORRUPT, verify
from datamon.cas.hashing import key_of
from datamon.cas.objects import Location, decode_object
from datamon.cas.pack import Compression, Kind
from datamon.errors import CorruptObject, IntegrityError
from tests.integrity.helpers import cli_env, datamon_cmd
from tests.trust.forge import put_bundle, put_stored
from tests.trust.test_cas_common import KiB, bundle_of, file_entry, small_ctx

GiB = 1 << 30
BLOCK = 128 * KiB


def bomb(expands_to: int, declare: int | None, blocks: int | None = None) -> bytes:
    """A zstd frame of RLE blocks (4 bytes per 128 KiB of zeros) expanding to ``expands_to``
    bytes (or only ``blocks`` blocks of it), declaring ``declare`` bytes in its header
    (``None``: no content size, as a streaming compressor writes)."""
    if declare is None:
        header = struct.pack("<IBB", 0xFD2FB528, 0x00, (27 - 10) << 3)  # window descriptor: 128 MiB
    else:
        header = struct.pack("<IBQ", 0xFD2FB528, 0xE0, declare)  # single segment, 8-byte size
    n = -(-expands_to // BLOCK) if blocks is None else blocks
    out = [header]
    for i in range(n):
        size = min(BLOCK, expands_to - i * BLOCK)
        last = 1 if i == n - 1 else 0
        out.append(struct.pack("<I", last | (1 << 1) | (size << 3))[:3] + b"\x00")
    return b"".join(out)


def test_the_bombs_are_real() -> None:
    small = bomb(3 * BLOCK + 5, 3 * BLOCK + 5)
    assert zstandard.ZstdDecompressor().decompress(small) == bytes(3 * BLOCK + 5)
    assert len(bomb(4 * GiB - BLOCK, 4 * GiB - BLOCK)) < 140_000  # 131 KB declaring ~4 GiB
    assert zstandard.frame_content_size(bomb(1, 1 << 40, blocks=1)) == 1 << 40


def _loc(key: bytes, stored: bytes, raw_length: int, kind: int = Kind.CHUNK) -> Location:
    return Location(key, "p" * 64, 8, len(stored), raw_length, kind, Compression.ZSTD)


@pytest.mark.parametrize("kind", [Kind.CHUNK, Kind.TREE, Kind.FILEMAP])
def test_declared_size_other_than_raw_length_is_refused_before_allocating(kind: int) -> None:
    frame = bomb(BLOCK, 1 << 40, blocks=1)  # declares 1 TiB
    key = key_of(b"x")
    with pytest.raises(CorruptObject, match="declares") as err:
        decode_object(_loc(key, frame, 100_000, kind), frame, "pack p", max_chunk=128 * KiB)
    assert key.hex() in str(err.value)


def test_raw_length_beyond_the_kinds_cap_is_refused_before_fetching() -> None:
    frame = bomb(3 * GiB, 3 * GiB, blocks=1)
    for kind, cap in ((Kind.CHUNK, 128 * KiB), (Kind.TREE, GiB), (Kind.FILEMAP, GiB)):
        with pytest.raises(CorruptObject, match="raw bytes"):
            decode_object(_loc(key_of(b"x"), frame, 3 * GiB, kind), frame, "pack p", max_chunk=cap)


def test_frame_without_size_stops_at_raw_length() -> None:
    frame = bomb(3 * GiB, None)  # expands to 3 GiB; about 100 KB stored
    with pytest.raises(CorruptObject, match="wrong length"):
        decode_object(_loc(key_of(b"x"), frame, 100 * KiB), frame, "pack p", max_chunk=128 * KiB)


def _bomb_bundle(root: Path, frame: bytes, raw_length: int) -> tuple[str, bytes]:
    with small_ctx(root) as ctx:
        key = key_of(b"the bytes this chunk should have had")
        put_stored(ctx, key, frame, raw_length, Kind.CHUNK, Compression.ZSTD)
        return bundle_of(ctx, [file_entry("bomb.bin", key, raw_length)]), key


@pytest.mark.parametrize("declared", [True, False])
def test_download_and_verify_of_a_bomb_fail_naming_it(tmp_path: Path, declared: bool) -> None:
    raw_length = 100 * KiB
    frame = bomb(3 * GiB, 4 * GiB - BLOCK if declared else None)
    bid, key = _bomb_bundle(tmp_path / "s", frame, raw_length)
    with small_ctx(tmp_path / "s") as ctx:
        with pytest.raises(IntegrityError) as err:
            ctx.download("r", tmp_path / "d", bundle=bid)
        assert key.hex() in str(err.value)
        r = verify(ctx, full=True)
        assert r.problems[key.hex()].kind == CORRUPT


def _max_rss_mib(cmd: list[str], env: dict[str, str]) -> tuple[int, int, str]:
    """(exit code, peak RSS in MiB, stderr) of ``cmd`` run in a fresh wrapper process."""
    wrapper = (
        "import resource, subprocess, sys\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stderr.write(p.stderr)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n"
        "sys.exit(p.returncode)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", wrapper, *cmd], env=env, capture_output=True, text=True, timeout=120
    )
    return p.returncode, int(p.stdout.strip().splitlines()[-1]), p.stderr


def test_cli_download_and_verify_of_a_bomb_exit_4_with_bounded_memory(tmp_path: Path) -> None:
    root = tmp_path / "s"
    bid, key = _bomb_bundle(root, bomb(3 * GiB, None), 100 * KiB)
    with small_ctx(root) as ctx:  # and a bomb tree: declares 1 TiB, row says 1000 bytes
        tkey = key_of(b"tree")
        put_stored(ctx, tkey, bomb(BLOCK, 1 << 40, blocks=1), 1000, Kind.TREE, Compression.ZSTD)
        put_bundle(ctx, "r", tkey)
    env = cli_env(root)
    code, rss, err = _max_rss_mib(
        datamon_cmd("bundle", "download", "--repo", "r", "--bundle", bid, "--destination", tmp_path / "d"),
        env,
    )
    assert code == 4 and key.hex() in err, err
    assert rss < 400, f"download peaked at {rss} MiB"
    code, rss, err = _max_rss_mib(datamon_cmd("verify", "--full"), env)
    assert code == 4 and rss < 400, (code, rss, err)
