"""The README's "Query your data" example runs as written (with the files its comments describe)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import make_tree

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_query_example_runs(dm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    m = re.search(r"### Query your data\n\n```bash\n(.*?)```", README.read_text(), re.S)
    assert m, "README lost its query example"
    work = make_tree(
        tmp_path / "work",
        {
            "images": {"a.png": "a", "b.png": "bb", "c.png": "ccc", "notes.txt": "n"},
            "labels.csv": "path,label,width\na.png,cat,640\nb.png,cat,320\nc.png,dog,1024\nnotes.txt,dog,\n",
            "schema.json": json.dumps(
                {
                    "attributes": {
                        "label": {"type": "string", "required": True, "values": ["cat", "dog"]},
                        "width": {"type": "int"},
                    }
                }
            ),
        },
    )
    assert dm("repo", "create", "--repo", "pets").code == 0
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    p = subprocess.run(
        ["bash", "-e", "-c", m.group(1)], cwd=work, env=env, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p
    lines = p.stdout.splitlines()
    assert lines[1:3] == ["path\twidth", "a.png\t640"], lines
    assert [json.loads(x) for x in lines[3:]] == [{"label": "cat", "n": 2}, {"label": "dog", "n": 2}]
