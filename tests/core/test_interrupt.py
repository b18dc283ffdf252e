"""Killing an upload leaves no bundle pointing at missing data; a rerun finishes by dedup."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import datamon
from datamon.cas.pack import pack_blob_name, read_index
from tests.conftest import tree_files


def _dataset(root: Path, n_files: int = 12, size: int = 8 << 20) -> Path:
    rnd = random.Random(3)
    root.mkdir()
    for i in range(n_files):
        half = size // 2
        text = b"".join(b"%d,%d,some text\n" % (i, j) for j in range(half // 16))[:half]
        (root / f"f{i:02d}.bin").write_bytes(rnd.randbytes(size - half) + text)
    return root


def _check_store_consistent(ctx) -> int:  # type: ignore[no-untyped-def]
    """Every index row names an existing pack whose own index agrees; returns #indexed packs."""
    packs = ctx.meta.list_packs()
    for p in packs:
        data = ctx.cas.blobs.get(pack_blob_name(p.name))
        rows = {e.key: e for e in read_index(data)}
        for row in ctx.meta.objects_in_pack(p.name):
            assert row[0] in rows and rows[row[0]].offset == row[2]
    return len(packs)


def _upload_cmd(src: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "datamon",
        "bundle",
        "upload",
        "--repo",
        "r",
        "--path",
        str(src),
        "--message",
        "m",
        "--label",
        "prod",
    ]


@pytest.mark.parametrize("sig,delay", [(signal.SIGKILL, 0.6), (signal.SIGKILL, 1.2), (signal.SIGINT, 0.9)])
def test_interrupted_upload_then_rerun(tmp_path: Path, sig: int, delay: float) -> None:
    src = _dataset(tmp_path / "src")
    with datamon.connect() as ctx:
        ctx.create_repo("r")
    proc = subprocess.Popen(_upload_cmd(src), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT and proc.returncode == 130:
        assert "interrupted" in err and "Traceback" not in err, err
    # else: it finished (0), or the signal came while Python was shutting down (-2): both fine,
    # what matters is the state of the store, checked below.
    with datamon.connect() as ctx:
        landed = ctx.meta.list_bundles("r")
        _check_store_consistent(ctx)
        if not landed:
            # killed before the bundle row: no label either (the label moves last)
            assert ctx.meta.list_labels("r") == []
        else:
            # killed after the bundle row landed: it must be complete
            ctx.download("r", tmp_path / "landed", bundle=landed[0].id)
            assert tree_files(tmp_path / "landed") == tree_files(src)
    rerun = subprocess.run(_upload_cmd(src), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    with datamon.connect() as ctx:
        _check_store_consistent(ctx)
        ctx.download("r", tmp_path / "out", label="prod")
    assert tree_files(tmp_path / "out") == tree_files(src)
    assert os.path.exists(tmp_path / "out/f00.bin")
