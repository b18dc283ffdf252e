"""Rendering results: human text, ``--json`` (one object per line) and ``--format``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import click


def iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def output_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--format", "fmt", metavar="TEMPLATE", help="Python format string per item, e.g. '{id}'."
    )(f)
    f = click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")(f)
    return f


def emit(
    rows: Iterable[dict[str, Any]], *, as_json: bool, fmt: str | None, text: Callable[[dict[str, Any]], str]
) -> None:
    """Print rows as JSON lines, through a format template, or as human text."""
    out = sys.stdout
    for row in rows:
        if as_json:
            out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        elif fmt:
            try:
                out.write(fmt.format_map(row) + "\n")
            except (KeyError, IndexError, ValueError) as e:
                from datamon.errors import UsageError

                raise UsageError(
                    f"--format {fmt!r} cannot be filled: {e}", f"available fields: {', '.join(sorted(row))}"
                ) from None
        else:
            out.write(text(row) + "\n")
    out.flush()


def bundle_row(b: Any, labels: list[str] | None = None) -> dict[str, Any]:
    return {
        "id": b.id,
        "repo": b.repo,
        "time": iso(b.created_ns),
        "contributor": f"{b.contributor_name} <{b.contributor_email}>"
        if b.contributor_email
        else b.contributor_name,
        "message": b.message,
        "labels": labels or [],
        "parents": list(b.parents),
        "tree": b.tree,
        "files": b.file_count,
        "size": b.total_size,
    }


def label_row(lab: Any) -> dict[str, Any]:
    return {
        "repo": lab.repo,
        "label": lab.name,
        "name": lab.name,
        "bundle": lab.bundle_id,
        "id": lab.bundle_id,
        "time": iso(lab.updated_ns),
        "contributor": lab.contributor,
    }


class RichProgress:
    """Files, bytes and throughput on stderr; a no-op when stderr is not a terminal."""

    def __init__(self, verb: str) -> None:
        self.verb = verb
        self._p: Any = None
        self._task: Any = None
        self.enabled = sys.stderr.isatty()

    def start(self, files: int, nbytes: int) -> None:
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._p = Progress(
            TextColumn(f"{self.verb}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("{task.fields[files]}/{task.fields[total_files]} files"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._p.start()
        self._files = 0
        self._task = self._p.add_task(self.verb, total=max(nbytes, 1), files=0, total_files=files)

    def advance(self, files: int, nbytes: int) -> None:
        if self._p is not None:
            self._files += files
            self._p.update(self._task, advance=nbytes, files=self._files)

    def finish(self) -> None:
        if self._p is not None:
            self._p.stop()
            self._p = None
