"""``datamon query`` and ``datamon repo schema set|get`` (docs/query.md)."""

from __future__ import annotations

import sys
from typing import Any

import click

from datamon.cli.common import context_option, open_context, repo_option, stderr
from datamon.cli.render import check_format, emit, iso, output_options, safe


@click.command("query")
@click.argument("sql")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per row.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header line.")
@click.option("--format", "fmt", metavar="TEMPLATE", help="Python format string per row, e.g. '{path}'.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.001),
    default=60.0,
    show_default=True,
    help="Seconds the query may run.",
)
@context_option
def query_cmd(sql: str, as_json: bool, as_csv: bool, fmt: str | None, timeout: float) -> None:
    """Run one read-only SQL query over the views files, bundles, labels, label_history, repos.

    Writes of any kind (DROP, UPDATE, ATTACH, PRAGMA ...) are refused by the database (exit 1).
    A table on a terminal, tab-separated text otherwise.

    \b
    Example:
      datamon query "SELECT path, size FROM files WHERE repo = 'mnist' AND label = 'cat'"
      datamon query --json "SELECT label, count(*) AS n FROM files GROUP BY label"
    """
    from datamon.api.query import execute
    from datamon.errors import UsageError

    if sum((as_json, as_csv, fmt is not None)) > 1:
        raise UsageError("give at most one of --json, --csv and --format")
    if fmt is not None:
        check_format(fmt)
    dm = open_context()
    with execute(dm, sql, timeout_s=timeout) as r:
        cols = r.columns
        rows = (dict(zip(cols, row, strict=True)) for row in r)
        if as_json or fmt:
            emit(rows, as_json=as_json, fmt=fmt, text=str)
        elif as_csv:
            import csv

            w = csv.writer(sys.stdout, lineterminator="\n")
            w.writerow(cols)
            for row in rows:
                w.writerow(["" if v is None else v for v in row.values()])
        elif sys.stdout.isatty():
            _table(cols, rows)
        else:
            out = sys.stdout
            out.write("\t".join(safe(c) for c in cols) + "\n")
            for row in rows:
                out.write("\t".join("" if v is None else safe(v) for v in row.values()) + "\n")
            out.flush()


def _table(cols: list[str], rows: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(*[safe(c) for c in cols])
    n = 0
    for row in rows:
        t.add_row(*["" if v is None else safe(v) for v in row.values()])
        n += 1
    Console().print(t)
    stderr(f"{n} row(s)")


# --- repo schema -------------------------------------------------------------------------------


@click.group("schema")
def schema() -> None:
    """Set and show a repo's schema: typed attribute columns and meta keys."""


def _schema_row(s: Any) -> dict[str, Any]:
    import json

    return {
        "repo": s.repo,
        "version": s.version,
        "time": iso(s.time_ns),
        "contributor": s.contributor,
        "schema": json.loads(s.schema),
    }


@schema.command("set")
@repo_option()
@click.option("--file", "path", required=True, type=click.Path(dir_okay=False), help="The schema (JSON).")
@context_option
def schema_set(repo: str, path: str) -> None:
    """Set a repo's schema from a JSON file (a new version; {} lifts the schema).

    Later uploads whose attributes or meta break it fail before anything is written.

    \b
    Example:
      datamon repo schema set --repo mnist --file schema.json
    """
    import json

    from datamon.api.attributes import set_schema
    from datamon.errors import UsageError

    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, RecursionError) as e:
        raise UsageError(f"{path} is not JSON: {str(e)[:80]}") from None
    rec = set_schema(open_context(), repo, doc)
    stderr(f"repo {repo}: schema version {rec.version} set")


@schema.command("get")
@repo_option()
@click.option("--history", is_flag=True, help="Every version, newest first.")
@output_options
@context_option
def schema_get(repo: str, history: bool, as_json: bool, fmt: str | None) -> None:
    """Show a repo's schema (exit 2 if it never had one).

    \b
    Example:
      datamon repo schema get --repo mnist --json
      datamon repo schema get --repo mnist --history
    """
    import json

    from datamon.errors import NotFound

    dm = open_context()
    found = dm.meta.schema_history(repo)
    if not found:
        raise NotFound(
            f"repo {repo!r} has no schema", f"set one with `datamon repo schema set --repo {repo}`"
        )
    rows = [_schema_row(s) for s in (found if history else found[:1])]
    if not history and not as_json and not fmt:
        sys.stdout.write(json.dumps(rows[0]["schema"], indent=2, sort_keys=True) + "\n")
        return
    emit(
        rows,
        as_json=as_json,
        fmt=fmt,
        text=lambda r: "\t".join(
            (str(r["version"]), r["time"], r["contributor"], json.dumps(r["schema"], sort_keys=True))
        ),
    )


def register(cli: click.Group) -> None:
    cli.add_command(query_cmd)
    repo_group = cli.commands.get("repo")
    if isinstance(repo_group, click.Group):
        repo_group.add_command(schema)
