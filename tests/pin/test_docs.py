"""The plain-shell CI example of docs/ci.md runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.pin.conftest import Dm, Store

DOC = Path(__file__).resolve().parents[2] / "docs" / "ci.md"


def test_ci_shell_example_runs(dm: Dm, store: Store, project: Path) -> None:
    text = DOC.read_text()
    m = re.search(r"<!-- ci-shell-begin -->\n```bash\n(.*?)```\n<!-- ci-shell-end -->", text, re.S)
    assert m, "docs/ci.md lost its ci-shell markers"
    assert dm("lock", "add", "mnist", "--repo", "mnist", "--label", "prod", "--path", "data/mnist").code == 0
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    p = subprocess.run(
        ["bash", "-c", m.group(1)], cwd=project, env=env, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p
    assert "downloaded bundle" in p.stderr and "0 B transferred" in p.stderr, p.stderr
    assert "mnist: ok" in p.stderr
    # the same script fails loudly when the pulled data was modified
    (project / "data/mnist/README").write_text("changed\n")
    script = m.group(1).replace("datamon pull", "true")
    p = subprocess.run(
        ["bash", "-c", script], cwd=project, env=env, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 4, p
