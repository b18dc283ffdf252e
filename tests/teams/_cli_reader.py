"""A reader process for the concurrency test: polls ``datamon bundle list`` and downloads every bundle
it sees, through the CLI entry point (imported once, so a poll costs no interpreter start).

    python -m tests.teams._cli_reader CONTEXT REPO WORKDIR STOPFILE

Prints one JSON line per bundle seen: ``{"id", "message", "files": {path: sha256}}``, or
``{"error": ...}`` for a command that failed. Stops after the poll that follows STOPFILE appearing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import time
from pathlib import Path

from datamon.cli import main


def _cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return int(code or 0), out.getvalue(), err.getvalue()


def _digests(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath, name)
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run(context: str, repo: str, workdir: Path, stopfile: Path) -> None:
    seen: set[str] = set()
    last = False
    while True:
        last = stopfile.exists()
        code, out, err = _cli("--context", context, "bundle", "list", "--repo", repo, "--json")
        if code != 0:
            print(json.dumps({"error": err.strip()}), flush=True)
            return
        for line in out.splitlines():
            b = json.loads(line)
            if b["id"] in seen:
                continue
            seen.add(b["id"])
            dest = workdir / b["id"]
            code, _, err = _cli(
                "--context", context, "bundle", "download", "--repo", repo, "--bundle", b["id"],
                "--destination", str(dest),
            )  # fmt: skip
            if code != 0:
                print(json.dumps({"error": err.strip(), "id": b["id"]}), flush=True)
                continue
            print(json.dumps({"id": b["id"], "message": b["message"], "files": _digests(dest)}), flush=True)
        if last:
            return
        time.sleep(0.05)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
