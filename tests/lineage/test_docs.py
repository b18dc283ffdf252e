"""The README's "Record how data was made" example runs as written; the run record format is pinned."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from datamon.api.runs import encode_run
from datamon.meta.runs import RunLink
from tests.conftest import make_tree

README = Path(__file__).resolve().parents[2] / "README.md"
CLEAN = """
import os
src, dst = os.environ["DATAMON_INPUT_RAW"], os.environ["DATAMON_OUTPUT_CLEAN"]
for n in os.listdir(src):
    open(os.path.join(dst, n), "w").write(open(os.path.join(src, n)).read().strip() + " cleaned\\n")
"""


def test_readme_lineage_example_runs(dm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    text = README.read_text()
    m = re.search(r"### Record how data was made\n\n```bash\n(.*?)```", text, re.S)
    assert m, "README lost its lineage example"
    if shutil.which("dot") is None and os.environ.get("CI") != "true":
        pytest.skip("graphviz is not installed (scripts/install-test-deps.sh installs it)")
    for repo in ("mnist", "mnist-clean"):
        assert dm("repo", "create", "--repo", repo).code == 0
    src = make_tree(tmp_path / "src", {"a.txt": "a\n"})
    assert (
        dm("bundle", "upload", "--repo", "mnist", "--path", src, "--message", "m", "--label", "prod").code
        == 0
    )
    work = make_tree(tmp_path / "work", {"clean.py": CLEAN})
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    p = subprocess.run(
        ["bash", "-ec", m.group(1)], cwd=work, env=env, capture_output=True, text=True, timeout=180
    )
    assert p.returncode == 0, p
    assert "reproduced" in p.stderr and "succeeded" in p.stderr
    assert "<svg" in (work / "lineage.svg").read_text()
    assert "python clean.py" in p.stdout  # the upstream lineage names the command


def test_run_record_encoding_is_pinned() -> None:
    """A golden record: if this changes, every stored run id changes (docs/lineage.md)."""
    h = "ab" * 32
    r = encode_run(
        status="succeeded",
        exit_code=0,
        inputs=[RunLink("raw", "mnist", h, h)],
        outputs=[RunLink("clean", "mnist-clean", h, h)],
        command=["python", "clean.py"],
        params={"seed": "1"},
        cwd="/w",
        git={"commit": "c" * 40, "dirty": False},
        python={"version": "3.11.7", "packages": 2, "digest": h},
        env={},
        host="h",
        contributor_name="Ada",
        contributor_email="ada@example.com",
        start_ns=1_700_000_000_000_000_000,
        end_ns=1_700_000_001_000_000_000,
        external=False,
    )
    assert r.raw == (
        b'{"command":["python","clean.py"],"contributor":{"email":"ada@example.com","name":"Ada"},'
        b'"cwd":"/w","end_ns":1700000001000000000,"env":{},"exit_code":0,"external":false,'
        b'"git":{"commit":"' + b"c" * 40 + b'","dirty":false},"host":"h",'
        b'"inputs":[{"bundle":"'
        + h.encode()
        + b'","name":"raw","repo":"mnist","tree":"'
        + h.encode()
        + b'"}],'
        b'"outputs":[{"bundle":"'
        + h.encode()
        + b'","name":"clean","repo":"mnist-clean","tree":"'
        + h.encode()
        + b'"}],"params":{"seed":"1"},"python":{"digest":"'
        + h.encode()
        + b'","packages":2,"version":"3.11.7"},"reproduces":null,"start_ns":1700000000000000000,'
        b'"status":"succeeded","version":1}'
    )
    from datamon.cas.hashing import key_of

    assert r.id == key_of(r.raw).hex() == "196988f769b302e102cfcef70151122f12df8e80904126ca1195099107278496"
