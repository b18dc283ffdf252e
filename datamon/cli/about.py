"""``datamon version`` and the global ``--loglevel``.

``--loglevel LEVEL`` (or ``DATAMON_LOGLEVEL``) is accepted anywhere before a ``--``, as Datamon's
persistent flag was (``datamon bundle upload … --loglevel debug``): ``split_loglevel`` takes it out of
the arguments before click parses them. Logs go to stderr; the default, ``warning``, prints only what
needs attention (store retries, a mount's errors). Results and one-line errors are unaffected.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

from datamon.errors import UsageError

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "none": logging.CRITICAL + 10,
}
ENV = "DATAMON_LOGLEVEL"


def split_loglevel(argv: list[str]) -> tuple[list[str], str | None]:
    """``argv`` without its ``--loglevel`` options (before any ``--``), and the last level given."""
    out: list[str] = []
    level: str | None = None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            out += argv[i:]
            break
        if a == "--loglevel":
            if i + 1 >= len(argv):
                raise UsageError("--loglevel needs a value", f"one of {', '.join(LEVELS)}")
            level = argv[i + 1]
            i += 2
            continue
        if a.startswith("--loglevel="):
            level = a.partition("=")[2]
        else:
            out.append(a)
        i += 1
    return out, level


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is at the time of each record (the CLI runs
    in-process under tests and notebooks, which swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def setup_logging(level: str | None) -> None:
    """Send datamon's logs to stderr at ``level`` (else ``$DATAMON_LOGLEVEL``, else warning). A level
    given is exported so that processes datamon starts (a FUSE mount, a run's steps) log alike. The
    default leaves the ``datamon`` logger's own level and propagation alone (a host program's or a
    test's logging setup keeps working); only the stderr handler filters."""
    given = level or os.environ.get(ENV)
    name = (given or "warning").strip().lower()
    if name not in LEVELS:
        raise UsageError(f"unknown log level {name[:40]!r}", f"use one of {', '.join(LEVELS)}")
    logger = logging.getLogger("datamon")
    handler = next((h for h in logger.handlers if getattr(h, "_datamon", False)), None)
    if handler is None:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("datamon: %(levelname)s %(name)s: %(message)s"))
        handler._datamon = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    handler.setLevel(LEVELS[name])
    if given:
        os.environ[ENV] = name
        logger.setLevel(LEVELS[name])


def version_info() -> dict[str, Any]:
    """datamon's version, Python's, and the version of every stored format this build reads."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from datamon.api.bundles import RECORD_VERSION
    from datamon.api.lock import LOCK_VERSION
    from datamon.api.runs import RUN_VERSION
    from datamon.cas import filemap, pack, tree
    from datamon.cas.storeconfig import FORMAT_VERSION
    from datamon.meta.revision import HEAD_REVISION

    try:
        ours = version("datamon")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        ours = "unknown"
    return {
        "datamon": ours,
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "formats": {
            "store": FORMAT_VERSION,
            "pack": pack.PACK_MAGIC[-1],
            "tree": tree.MAGIC[-1],
            "filemap": filemap.MAGIC[-1],
            "bundle_record": RECORD_VERSION,
            "run_record": RUN_VERSION,
            "lock_file": LOCK_VERSION,
            "metadata_schema": HEAD_REVISION,
        },
    }


@click.command("version")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def version_cmd(as_json: bool) -> None:
    """Print datamon's version, Python's, and the store formats it reads and writes.

    \b
    Example:
      datamon version
      datamon version --json
    """
    from datamon.cli.render import json_line

    info = version_info()
    if as_json:
        click.echo(json_line(info))
        return
    click.echo(f"datamon {info['datamon']}")
    click.echo(f"Python {info['python']}")
    click.echo("formats: " + ", ".join(f"{k} {v}" for k, v in info["formats"].items()))


def register(cli: click.Group) -> None:
    cli.add_command(version_cmd)
