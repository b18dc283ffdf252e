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


# --- bundle slice ------------------------------------------------------------------------------


@click.command("slice")
@click.option("--repo", help="Repo of the source bundle (with --where).")
@click.option("--bundle", metavar="ID", help="Source bundle id or prefix (default: the latest).")
@click.option("--label", metavar="NAME", help="Source bundle by label.")
@click.option("--where", metavar="SQL", help="A condition over the columns of the files view.")
@click.option("--query", metavar="SQL", help="A query returning repo, bundle, path rows (any bundles).")
@click.option("--message", required=True, help="What the new bundle is.")
@click.option("--to-repo", metavar="REPO", help="Repo of the new bundle (default: --repo).")
@click.option("--set-label", "new_label", metavar="NAME", help="Point this label at the new bundle.")
@click.option("--meta", "meta_pairs", multiple=True, metavar="KEY=VALUE", help="Bundle metadata (repeat).")
@output_options
@context_option
def slice_cmd(
    repo: str | None,
    bundle: str | None,
    label: str | None,
    where: str | None,
    query: str | None,
    message: str,
    to_repo: str | None,
    new_label: str | None,
    meta_pairs: tuple[str, ...],
    as_json: bool,
    fmt: str | None,
) -> None:
    """Make a bundle of chosen files of other bundles, moving no data; prints its id.

    The files keep their bytes, modes, times and attributes; the parents are the source bundles.

    \b
    Example:
      datamon bundle slice --repo pets --label prod --where "label = 'cat'" --message cats --set-label cats
      datamon bundle slice --to-repo mix --message m --query "SELECT repo, bundle, path FROM files"
    """
    from datamon.api.attributes import parse_meta_args
    from datamon.api.slice import slice_bundle
    from datamon.cli.render import bundle_row
    from datamon.errors import UsageError

    target = to_repo or repo
    if not target:
        raise UsageError("give --to-repo (or --repo)")
    r = slice_bundle(
        open_context(),
        message=message,
        to_repo=target,
        repo=repo,
        bundle=bundle,
        label=label,
        where=where,
        query=query,
        new_label=new_label,
        meta=parse_meta_args(meta_pairs, None),
    )
    row = bundle_row(r.bundle, [new_label] if new_label else [])
    emit([row], as_json=as_json, fmt=fmt, text=lambda row: str(row["id"]))
    stderr(f"sliced {r.files} files ({r.bytes} bytes) from {len(r.sources)} bundle(s); no data copied")


def register(cli: click.Group) -> None:
    cli.add_command(query_cmd)
    bundle_group = cli.commands.get("bundle")
    if isinstance(bundle_group, click.Group):
        bundle_group.add_command(slice_cmd)
    repo_group = cli.commands.get("repo")
    if isinstance(repo_group, click.Group):
        repo_group.add_command(schema)
