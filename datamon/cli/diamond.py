"""``datamon diamond initialize|split add|split list|split get|commit|list|get|cancel`` (docs/diamonds.md)."""

from __future__ import annotations

from typing import Any

import click

from datamon.cli.common import (
    LABEL,
    MESSAGE,
    BundleId,
    Name,
    concurrency_option,
    context_option,
    open_context,
    repo_option,
    stderr,
)
from datamon.cli.render import emit, human_size, iso, output_options

DIAMOND = Name("diamond", strict=False)
NEW_ID = Name("diamond", strict=True)
SPLIT = Name("split", strict=True)


def _diamond_option(f: Any) -> Any:
    return click.option("--diamond", required=True, metavar="ID", type=DIAMOND, help="The diamond id.")(f)


def diamond_row(d: Any) -> dict[str, Any]:
    return {
        "repo": d.repo,
        "id": d.id,
        "state": d.state,
        "tag": d.tag,
        "time": iso(d.created_ns),
        "ended": iso(d.ended_ns) if d.ended_ns else "",
        "contributor": f"{d.contributor_name} <{d.contributor_email}>",
        "bundle": d.bundle_id or "",
        "conflict_mode": d.conflict_mode or "",
        "conflicts": d.conflict_count,
        "conflicts_blob": d.conflicts_blob or "",
    }


def split_row(s: Any) -> dict[str, Any]:
    return {
        "diamond": s.diamond,
        "id": s.id,
        "state": s.state,
        "tag": s.tag,
        "source": s.source,
        "tree": s.tree or "",
        "files": s.file_count,
        "size": s.total_size,
        "seq": s.seq,
        "time": iso(s.started_ns),
        "ended": iso(s.ended_ns) if s.ended_ns else "",
        "seconds": round((s.ended_ns - s.started_ns) / 1e9, 3) if s.ended_ns else None,
        "contributor": f"{s.contributor_name} <{s.contributor_email}>",
        "host": s.host,
    }


def _diamond_text(r: dict[str, Any]) -> str:
    extra = f"\tbundle {r['bundle']}" if r["bundle"] else ""
    conflicts = f"\t{r['conflicts']} conflicts" if r["conflicts"] else ""
    tag = f"\t[{r['tag']}]" if r["tag"] else ""
    return f"{r['id']}\t{r['time']}\t{r['state']}{extra}{conflicts}{tag}"


def _split_text(r: dict[str, Any]) -> str:
    tag = f"\t[{r['tag']}]" if r["tag"] else ""
    size = f"{r['files']} files, {human_size(r['size'])}" if r["state"] == "done" else "-"
    return f"{r['id']}\t{r['time']}\t{r['state']}\t{size}\t{r['host']}\t{r['source']}{tag}"


@click.group()
def diamond() -> None:
    """Many writers, one bundle: splits uploaded in parallel, committed as one bundle.

    \b
    Example:
      id=$(datamon diamond initialize --repo mnist)
      datamon diamond split add --repo mnist --diamond "$id" --path /data/part1 &
      datamon diamond split add --repo mnist --diamond "$id" --path /data/part2 &
      wait
      datamon diamond commit --repo mnist --diamond "$id" --message "all parts" --label prod
    """


@diamond.command("initialize")
@repo_option()
@click.option(
    "--diamond", "diamond_id", metavar="ID", type=NEW_ID, help="Choose the id (default: a new one)."
)
@click.option("--tag", "--diamond-tag", "tag", default="", help="A free text tag shown in listings and logs.")
@output_options
@context_option
def diamond_initialize(repo: str, diamond_id: str | None, tag: str, as_json: bool, fmt: str | None) -> None:
    """Start a new diamond; prints its id.

    \b
    Example:
      datamon diamond initialize --repo mnist --tag nightly
    """
    from datamon.api.diamond import initialize

    d = initialize(open_context(), repo, diamond=diamond_id, tag=tag)
    emit([diamond_row(d)], as_json=as_json, fmt=fmt, text=lambda r: str(r["id"]))


@diamond.command("list")
@repo_option()
@click.option(
    "--state",
    type=click.Choice(["initialized", "committed", "canceled"]),
    help="Only diamonds in this state.",
)
@output_options
@context_option
def diamond_list(repo: str, state: str | None, as_json: bool, fmt: str | None) -> None:
    """List the diamonds of a repo, newest first.

    \b
    Example:
      datamon diamond list --repo mnist --state initialized
    """
    from datamon.api.diamond import list_diamonds

    rows = [diamond_row(d) for d in list_diamonds(open_context(), repo, state)]
    emit(rows, as_json=as_json, fmt=fmt, text=_diamond_text)


@diamond.command("get")
@repo_option()
@_diamond_option
@click.option("--conflicts", "show_conflicts", is_flag=True, help="Also list the recorded conflicts.")
@output_options
@context_option
def diamond_get(repo: str, diamond: str, show_conflicts: bool, as_json: bool, fmt: str | None) -> None:
    """Show a diamond and its splits (and, with --conflicts, what its commit recorded).

    \b
    Example:
      datamon diamond get --repo mnist --diamond "$id" --conflicts --json
    """
    from datamon.api.diamond import get, list_splits

    dm = open_context()
    d = get(dm, repo, diamond)
    row = diamond_row(d)
    splits = [split_row(s) for s in list_splits(dm, repo, diamond)]
    conflicts = []
    if show_conflicts:
        conflicts = [
            {
                "path": c.path,
                "split": c.split,
                "kind": c.kind,
                "key": c.key,
                "size": c.size,
                "winner": c.winner,
            }
            for c in dm.meta.list_conflicts(repo, diamond)
        ]
    if as_json or fmt:
        row["splits"] = splits
        if show_conflicts:
            row["conflict_list"] = conflicts
        emit([row], as_json=as_json, fmt=fmt, text=_diamond_text)
        return
    emit([row], as_json=False, fmt=None, text=_diamond_text)
    emit(splits, as_json=False, fmt=None, text=lambda r: "split\t" + _split_text(r))
    emit(
        conflicts,
        as_json=False,
        fmt=None,
        text=lambda r: (
            f"conflict\t{r['path']}\t{r['split']}\t{r['key']}\t{'winner' if r['winner'] else 'lost'}"
        ),
    )


@diamond.command("cancel")
@repo_option()
@_diamond_option
@click.option("--tag", "--diamond-tag", "tag", default="", hidden=True, help="Accepted for Datamon scripts.")
@context_option
def diamond_cancel(repo: str, diamond: str, tag: str) -> None:
    """Cancel a diamond: no commit is accepted afterwards, and gc may reclaim its splits.

    \b
    Example:
      datamon diamond cancel --repo mnist --diamond "$id"
    """
    from datamon.api.diamond import cancel

    d = cancel(open_context(), repo, diamond)
    stderr(f"diamond {d.id} is {d.state}")


@diamond.command("commit")
@repo_option()
@_diamond_option
@click.option("--message", required=True, type=MESSAGE, help="What this bundle is.")
@click.option("--label", type=LABEL, help="Point this label at the new bundle.")
@click.option(
    "--conflicts",
    "mode",
    type=click.Choice(["fail", "last-wins", "ignore"]),
    default=None,
    help="Same path, different content in two splits: fail (default, exit 3 listing them), "
    "last-wins (the split that finished last wins; every conflict is recorded), or ignore "
    "(last wins, nothing recorded).",
)
@click.option("--no-conflicts", "go_fail", is_flag=True, hidden=True, help="Datamon: --conflicts fail.")
@click.option(
    "--with-conflicts", "go_record", is_flag=True, hidden=True, help="Datamon: --conflicts last-wins."
)
@click.option("--with-checkpoints", "go_checkpoints", is_flag=True, hidden=True, help="Datamon: last-wins.")
@click.option(
    "--ignore-conflicts", "go_ignore", is_flag=True, hidden=True, help="Datamon: --conflicts ignore."
)
@click.option("--ignore-running", is_flag=True, help="Commit the finished splits even if others still run.")
@click.option("--parent", "parents", multiple=True, metavar="ID", type=BundleId(), help="Parent bundle(s).")
@click.option("--tag", "--diamond-tag", "tag", default="", hidden=True, help="Accepted for Datamon scripts.")
@output_options
@context_option
def diamond_commit(
    repo: str,
    diamond: str,
    message: str,
    label: str | None,
    mode: str | None,
    go_fail: bool,
    go_record: bool,
    go_checkpoints: bool,
    go_ignore: bool,
    ignore_running: bool,
    parents: tuple[str, ...],
    tag: str,
    as_json: bool,
    fmt: str | None,
) -> None:
    """Merge the diamond's splits into one bundle; prints the bundle id. Exit 3 if it was
    committed already, or (with --conflicts fail) if splits disagree on a path.

    \b
    Example:
      datamon diamond commit --repo mnist --diamond "$id" --message "nightly" --conflicts last-wins
    """
    from datamon.api.diamond import DiamondConflicts, commit
    from datamon.errors import UsageError

    chosen = [
        m
        for m, on in (("fail", go_fail), ("last-wins", go_record or go_checkpoints), ("ignore", go_ignore))
        if on
    ]
    if mode is not None:
        chosen.append(mode)
    if len(set(chosen)) > 1:
        raise UsageError("conflicting conflict modes", "give one of --conflicts fail|last-wins|ignore")
    dm = open_context()
    try:
        r = commit(
            dm,
            repo,
            diamond,
            message=message,
            label=label,
            conflicts=chosen[0] if chosen else "fail",
            parents=list(parents) or None,
            ignore_running=ignore_running,
        )
    except DiamondConflicts as e:
        for c in e.conflicts:
            versions = ", ".join(
                f"split {v.split}: {v.entry.kind.name.lower()} {v.entry.key.hex()[:12]}" for v in c.versions
            )
            stderr(f"conflict: {c.path}: {versions}")
        raise
    for c in r.conflicts:
        won = next((v.split for v in reversed(c.versions) if v.winner), "")
        lost = ", ".join(v.split for v in c.versions if not v.winner)
        stderr(f"conflict: {c.path}: split {won} won over {lost}")
    row = diamond_row(r.diamond)
    row.update(
        files=r.bundle.file_count,
        size=r.bundle.total_size,
        splits=len(r.splits),
        label=label or "",
        seconds=round(r.seconds, 3),
        merge_seconds=round(r.merge_seconds, 3),
    )
    emit([row], as_json=as_json, fmt=fmt, text=lambda r: str(r["bundle"]))
    stderr(
        f"committed diamond {r.diamond.id}: {len(r.splits)} splits, {r.bundle.file_count} files "
        f"({human_size(r.bundle.total_size)}), {len(r.conflicts)} conflicts, in {r.seconds:.1f}s"
    )


@diamond.group("split")
def split() -> None:
    """Add, list and inspect the splits of a diamond."""


@split.command("add")
@repo_option()
@_diamond_option
@click.option("--path", required=True, help="Directory to upload, or s3://bucket/prefix, gs://bucket/prefix.")
@click.option(
    "--split-id",
    "--split",
    "split_id",
    metavar="ID",
    type=SPLIT,
    help="Split id (default: a new one). Re-using an id replaces that split (a retried worker is safe).",
)
@click.option("--split-tag", "--tag", "tag", default="", help="A free text tag, e.g. the host or pod name.")
@click.option(
    "--files",
    "files_list",
    type=click.File("r"),
    help="File listing the paths (relative to --path) to upload.",
)
@click.option(
    "--skip-on-error", is_flag=True, help="Skip unreadable files and report them instead of failing."
)
@concurrency_option
@output_options
@context_option
def split_add(
    repo: str,
    diamond: str,
    path: str,
    split_id: str | None,
    tag: str,
    files_list: Any,
    skip_on_error: bool,
    concurrency: int | None,
    as_json: bool,
    fmt: str | None,
) -> None:
    """Upload a directory as one split of a diamond; prints the split id.

    \b
    Example:
      datamon diamond split add --repo mnist --diamond "$id" --path /data/part1 --split-id part1
    """
    from datamon.api.diamond import add_split
    from datamon.cli.render import RichProgress

    files = None
    if files_list is not None:
        files = [ln.rstrip("\n") for ln in files_list if ln.strip()]
    r = add_split(
        open_context(),
        repo,
        diamond,
        path,
        split=split_id,
        tag=tag,
        files=files,
        skip_on_error=skip_on_error,
        concurrency=concurrency,
        progress=RichProgress("split"),
    )
    for p, err in r.upload.skipped:
        stderr(f"skipped {p}: {err}")
    row = split_row(r.split)
    row.update(
        read_files=r.upload.read_files, new_bytes=r.upload.new_bytes, stored_bytes=r.upload.stored_bytes
    )
    emit([row], as_json=as_json, fmt=fmt, text=lambda r: str(r["id"]))
    t = r.upload
    stderr(
        f"split {r.split.id}: {t.files} files ({human_size(t.bytes)}) in {r.seconds:.1f}s: "
        f"{t.read_files} read, {human_size(t.new_bytes)} new, {human_size(t.stored_bytes)} stored"
    )


@split.command("list")
@repo_option()
@_diamond_option
@output_options
@context_option
def split_list(repo: str, diamond: str, as_json: bool, fmt: str | None) -> None:
    """List the splits of a diamond, in the order they started.

    \b
    Example:
      datamon diamond split list --repo mnist --diamond "$id" --json
    """
    from datamon.api.diamond import list_splits

    emit(
        [split_row(s) for s in list_splits(open_context(), repo, diamond)],
        as_json=as_json,
        fmt=fmt,
        text=_split_text,
    )


@split.command("get")
@repo_option()
@_diamond_option
@click.option(
    "--split-id", "--split", "split_id", required=True, metavar="ID", type=Name("split", strict=False)
)
@output_options
@context_option
def split_get(repo: str, diamond: str, split_id: str, as_json: bool, fmt: str | None) -> None:
    """Show one split of a diamond.

    \b
    Example:
      datamon diamond split get --repo mnist --diamond "$id" --split-id part1
    """
    from datamon.api.diamond import list_splits
    from datamon.errors import NotFound

    found = [s for s in list_splits(open_context(), repo, diamond) if s.id == split_id]
    if not found:
        raise NotFound(
            f"split {split_id!r} not found in diamond {diamond!r}",
            "list them with `datamon diamond split list`",
        )
    emit([split_row(found[0])], as_json=as_json, fmt=fmt, text=_split_text)


def dask_upload(
    repo: str,
    path: str,
    message: str,
    label: str | None,
    files: list[str] | None,
    address: str | None,
    splits: int | None,
    concurrency: int | None,
    as_json: bool,
    fmt: str | None,
) -> None:
    """``bundle upload --dask ADDRESS --splits N``: ``datamon.distributed.upload``."""
    from datamon.errors import UsageError

    if not address:
        raise UsageError("--splits needs --dask ADDRESS", "give the address of a Dask scheduler")
    try:
        from distributed import Client
    except ImportError:
        raise UsageError("--dask needs Dask", "install it with `pip install 'datamon[dask]'`") from None
    import time

    from datamon.distributed import upload

    t0 = time.perf_counter()
    dm = open_context()
    try:
        client = Client(address, timeout=30)
    except OSError as e:
        raise UsageError(f"cannot reach the Dask scheduler at {address}: {e}", "check --dask") from None
    try:
        r = upload(
            dm,
            repo,
            path,
            client=client,
            message=message,
            label=label,
            splits=splits,
            files=files,
            concurrency=concurrency,
        )
    finally:
        client.close()
    row = diamond_row(r.diamond)
    row.update(files=r.bundle.file_count, size=r.bundle.total_size, splits=len(r.splits), label=label or "")
    emit([row], as_json=as_json, fmt=fmt, text=lambda r: str(r["bundle"]))
    stderr(
        f"uploaded {r.bundle.file_count} files ({human_size(r.bundle.total_size)}) as {len(r.splits)} splits "
        f"of diamond {r.diamond.id} on {address}, in {time.perf_counter() - t0:.1f}s"
    )


def register(cli: click.Group) -> None:
    cli.add_command(diamond)
