"""`datamon run --mount`: inputs are read-only FUSE mounts for the step, unmounted afterwards."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from datamon.api.context import connect
from datamon.api.runs import list_runs
from tests.lineage.conftest import PY

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="/dev/fuse is absent: no kernel FUSE here"),
]

STEP = """
import os, sys
src, dst = os.environ["DATAMON_INPUT_RAW"], os.environ["DATAMON_OUTPUT_CLEAN"]
assert os.path.ismount(src), src
try:
    open(os.path.join(src, "new.txt"), "w")
    sys.exit("the input mount is writable")
except OSError:
    pass
for n in sorted(os.listdir(src)):
    open(os.path.join(dst, n), "w").write(open(os.path.join(src, n)).read()[::-1])
open(os.path.join(dst, "mountpoint"), "w").write(src)
"""


def test_inputs_mounted_read_only(dm, project: Path, repos: str) -> None:  # type: ignore[no-untyped-def]
    (project / "step.py").write_text(STEP)
    r = dm("run", "--mount", "--input", "raw=raw@prod", "--output", "clean=clean", "--", PY, "step.py")
    assert r.code == 0, r
    ctx = connect()
    (run,) = list_runs(ctx, "clean")
    assert run.inputs[0].bundle == repos and run.status == "succeeded"
    with ctx.open_file("clean", "a.csv") as f:
        assert f.read() == b"x,y\n1,2\n"[::-1]
    with ctx.open_file("clean", "mountpoint") as f:
        mnt = f.read().decode()
    assert not os.path.exists(mnt)  # unmounted, and the scratch directory removed
