"""``datamon bundle upload|download|list|get|diff|update`` (and ``download file``, ``list files``)."""

from __future__ import annotations

import sys

import click

from datamon.cli.common import (
    LABEL,
    MESSAGE,
    BundleId,
    Regex,
    batch_size_option,
    bundle_ref_options,
    concurrency_option,
    context_option,
    open_context,
    repo_option,
    set_resume_hint,
    stderr,
)
from datamon.cli.render import RichProgress, bundle_row, bundle_rows, emit, human_size, output_options


@click.group()
def bundle() -> None:
    """Upload, download, list, compare and update bundles."""


def _bundle_text(row: dict[str, object]) -> str:
    labels = f"\t[{', '.join(row['labels'])}]" if row["labels"] else ""  # type: ignore[arg-type]
    return f"{row['id']}\t{row['time']}\t{row['contributor']}\t{row['message']}{labels}"


@bundle.command("upload")
@repo_option()
@click.option("--path", required=True, type=click.Path(), help="Directory to upload.")
@click.option("--message", required=True, type=MESSAGE, help="What this bundle is.")
@click.option("--label", type=LABEL, help="Point this label at the new bundle.")
@click.option(
    "--files",
    "files_list",
    type=click.File("r"),
    help="File listing the paths (relative to --path) to upload.",
)
@click.option(
    "--skip-on-error", is_flag=True, help="Skip unreadable files and report them instead of failing."
)
@click.option(
    "--parent",
    "parents",
    multiple=True,
    metavar="ID",
    type=BundleId(),
    help="Parent bundle(s) (default: the latest).",
)
@click.option("--meta", "meta_pairs", multiple=True, metavar="KEY=VALUE", help="Bundle metadata (repeat).")
@click.option("--meta-file", type=click.Path(dir_okay=False), help="Bundle metadata from a JSON object.")
@click.option(
    "--attributes",
    type=click.Path(dir_okay=False),
    help="File attributes: JSON Lines, CSV or Parquet with a 'path' column.",
)
@concurrency_option
@click.option(
    "--dask",
    "dask_address",
    metavar="ADDRESS",
    help="Upload as splits on this Dask scheduler (datamon[dask]).",
)
@click.option(
    "--splits", type=click.IntRange(1), help="With --dask: how many splits (default: worker threads)."
)
@output_options
@context_option
def bundle_upload(
    repo: str,
    path: str,
    message: str,
    label: str | None,
    files_list: object,
    skip_on_error: bool,
    parents: tuple[str, ...],
    concurrency: int | None,
    meta_pairs: tuple[str, ...],
    meta_file: str | None,
    attributes: str | None,
    dask_address: str | None,
    splits: int | None,
    as_json: bool,
    fmt: str | None,
) -> None:
    """Upload a directory as a new bundle; prints the bundle id.

    \b
    Example:
      datamon bundle upload --repo mnist --path ./data --message "add test split" --label prod
      datamon bundle upload --repo mnist --path ./data --message m --meta source=scan --attributes a.csv
      datamon bundle upload --repo mnist --path s3://bucket/raw --message "nightly" --dask tcp://sched:8786
    """
    from datamon.api.attributes import parse_meta_args
    from datamon.api.upload import upload

    files = None
    if files_list is not None:
        files = [ln.rstrip("\n") for ln in files_list if ln.strip()]  # type: ignore[attr-defined]
    if dask_address or splits:  # many machines, one bundle: a diamond on a Dask cluster
        from datamon.cli.diamond import dask_upload

        dask_upload(repo, path, message, label, files, dask_address, splits, concurrency, as_json, fmt)
        return
    dm = open_context()
    r = upload(
        dm,
        repo,
        path,
        message=message,
        label=label,
        files=files,
        skip_on_error=skip_on_error,
        parents=list(parents) or None,
        concurrency=concurrency,
        progress=RichProgress("upload"),
        meta=parse_meta_args(meta_pairs, meta_file),
        attributes=attributes,
    )
    for p, err in r.skipped:
        stderr(f"skipped {p}: {err}")
    row = bundle_row(r.bundle, [label] if label else [])
    row.update(
        read_files=r.read_files,
        new_bytes=r.new_bytes,
        stored_bytes=r.stored_bytes,
        skipped=[p for p, _ in r.skipped],
        seconds=round(r.seconds, 3),
    )
    emit([row], as_json=as_json, fmt=fmt, text=lambda row: str(row["id"]))
    stderr(
        f"uploaded {r.files} files ({human_size(r.bytes)}) in {r.seconds:.1f}s: "
        f"{r.read_files} read, {human_size(r.new_bytes)} new, {human_size(r.stored_bytes)} stored"
        + (f", {len(r.skipped)} skipped" if r.skipped else "")
    )


@bundle.group("download", invoke_without_command=True)
@repo_option(required=False)
@bundle_ref_options
@click.option("--destination", type=click.Path(), help="Directory to write into (must be empty).")
@click.option("--name-filter", type=Regex(), help="Only paths matching this regular expression.")
@click.option(
    "--force-dest", is_flag=True, help="Allow a non-empty destination; files in the way are replaced."
)
@concurrency_option
@context_option
@click.pass_context
def bundle_download(
    ctx: click.Context,
    repo: str | None,
    bundle: str | None,
    label: str | None,
    destination: str | None,
    name_filter: str | None,
    force_dest: bool,
    concurrency: int | None,
) -> None:
    """Download a bundle (the latest without --bundle/--label) into a directory.

    \b
    Example:
      datamon bundle download --repo mnist --label prod --destination ./mnist
      datamon bundle download file --repo mnist --label prod --file train/labels.csv --destination .
    """
    if ctx.invoked_subcommand:
        return
    if not repo or not destination:
        raise click.UsageError("--repo and --destination are required")
    import shlex

    from datamon.api.bundles import resolve
    from datamon.api.download import download

    dm = open_context()
    b = resolve(dm, repo, bundle=bundle, label=label)
    set_resume_hint(
        "what is already downloaded is kept; finish with `datamon bundle update "
        f"--repo {shlex.quote(repo)} --bundle {b.id} --destination {shlex.quote(destination)}`"
    )
    r = download(
        dm,
        repo,
        destination,
        bundle=b.id,
        name_filter=name_filter,
        force_dest=force_dest,
        concurrency=concurrency,
        progress=RichProgress("download"),
    )
    stderr(
        f"downloaded bundle {r.bundle.id[:12]}: {r.files} files ({human_size(r.bytes)}) in {r.seconds:.1f}s"
    )


@bundle_download.command("file")
@repo_option()
@bundle_ref_options
@click.option("--file", "path", required=True, help="Path of the file inside the bundle.")
@click.option("--destination", required=True, type=click.Path(), help="Directory to write into.")
@context_option
def bundle_download_file(
    repo: str, bundle: str | None, label: str | None, path: str, destination: str
) -> None:
    """Download one file of a bundle to DESTINATION/PATH.

    \b
    Example:
      datamon bundle download file --repo mnist --label prod --file train/labels.csv --destination .
    """
    from datamon.api.download import download_file

    out = download_file(open_context(), repo, path, destination, bundle=bundle, label=label)
    stderr(f"wrote {out}")


@bundle.group("list", invoke_without_command=True)
@repo_option(required=False)
@batch_size_option
@output_options
@context_option
@click.pass_context
def bundle_list(
    ctx: click.Context, repo: str | None, batch_size: int | None, as_json: bool, fmt: str | None
) -> None:
    """List a repo's bundles, newest first.

    \b
    Example:
      datamon bundle list --repo mnist
      datamon bundle list files --repo mnist --label prod --name-filter '\\.csv$'
    """
    if ctx.invoked_subcommand:
        return
    if not repo:
        raise click.UsageError("--repo is required")
    dm = open_context()
    labels = dm.meta.labels_by_bundle(repo)
    # Bundles whose record fails its check are left out; the command then exits 4 naming them.
    emit(bundle_rows(dm.meta.list_bundles(repo), labels), as_json=as_json, fmt=fmt, text=_bundle_text)


@bundle_list.command("files")
@repo_option()
@bundle_ref_options
@click.option("--name-filter", type=Regex(), help="Only paths matching this regular expression.")
@output_options
@context_option
def bundle_list_files(
    repo: str, bundle: str | None, label: str | None, name_filter: str | None, as_json: bool, fmt: str | None
) -> None:
    """List the files of a bundle (the latest without --bundle/--label).

    \b
    Example:
      datamon bundle list files --repo mnist --bundle 3fa2c1 --json
    """
    from datamon.api.bundles import iter_entries, resolve
    from datamon.cli.render import iso_cached, safe

    dm = open_context()
    b = resolve(dm, repo, bundle=bundle, label=label)
    entries = iter_entries(dm, b, files_only=True, name_filter=name_filter)
    if not as_json and not fmt:
        # Human text, streamed: a line per file as its directory is decoded, no row dicts.
        out = sys.stdout
        lines: list[str] = []
        batch = 64  # the first lines go out at once, then in blocks
        for path, e in entries:
            if not path.isprintable():
                path = safe(path)
            if e.target:
                lines.append(f"{path}\t{e.size}\t-> {safe(e.target)}")
            else:
                lines.append(f"{path}\t{e.size}")
            if len(lines) >= batch:
                lines.append("")
                out.write("\n".join(lines))
                if batch == 64:
                    out.flush()
                lines, batch = [], 4096
        if lines:
            lines.append("")
            out.write("\n".join(lines))
        out.flush()
        return
    rows = (
        {
            "path": path,
            "kind": e.kind.name.lower(),
            "size": e.size,
            "mode": f"{e.mode:o}",
            "mtime": iso_cached(e.mtime_ns),
            "key": e.key.hex() if e.is_file else "",
            "target": e.target,
        }
        for path, e in entries
    )
    emit(
        rows,
        as_json=as_json,
        fmt=fmt,
        text=lambda r: f"{r['path']}\t{r['size']}" + (f"\t-> {r['target']}" if r["target"] else ""),
    )


@bundle.command("get")
@repo_option()
@bundle_ref_options
@output_options
@context_option
def bundle_get(repo: str, bundle: str | None, label: str | None, as_json: bool, fmt: str | None) -> None:
    """Show one bundle (the latest without --bundle/--label).

    \b
    Example:
      datamon bundle get --repo mnist --label prod --format '{id}'
    """
    from datamon.api.bundles import resolve

    dm = open_context()
    b = resolve(dm, repo, bundle=bundle, label=label)
    labels = dm.meta.labels_by_bundle(repo).get(b.id, [])
    emit(
        [bundle_row(b, labels)],
        as_json=as_json,
        fmt=fmt,
        text=lambda r: "\n".join(f"{k}: {v}" for k, v in r.items()),
    )


@bundle.command("diff")
@repo_option()
@click.argument("range_", metavar="[A..B]", required=False)
@bundle_ref_options
@click.option("--destination", type=click.Path(), help="Compare this directory (a download) with the bundle.")
@concurrency_option
@output_options
@context_option
def bundle_diff(
    repo: str,
    range_: str | None,
    bundle: str | None,
    label: str | None,
    destination: str | None,
    concurrency: int | None,
    as_json: bool,
    fmt: str | None,
) -> None:
    """Show what changed between two bundles, or between a directory and a bundle.

    Lines are 'A path' (added), 'U path' (updated) and 'D path' (deleted), going from A to
    B, or from the directory to the bundle. A and B are ids, id prefixes or label names.
    Exits 0 whether or not there are differences.

    \b
    Example:
      datamon bundle diff --repo mnist 3fa2c1..prod
      datamon bundle diff --repo mnist --label prod --destination ./mnist
    """
    from datamon.api import diff as d

    dm = open_context()
    if destination:
        if range_:
            raise click.UsageError("give either A..B or --destination, not both")
        changes = d.diff_destination(dm, repo, destination, bundle=bundle, label=label)
    else:
        a, b = _range(range_)
        changes = d.diff_bundles(dm, repo, a, b)
    emit((c.as_dict() for c in changes), as_json=as_json, fmt=fmt, text=_diff_text)


def _diff_text(r: dict[str, object]) -> str:
    """``U path`` and, for an updated file, a tab and both sides: ``SIZE KEY -> SIZE KEY``."""
    line = f"{r['op']} {r['path']}"
    if r["op"] == "U" and (r["old_key"] or r["new_key"]):
        line += f"\t{r['old_size']} {r['old_key'] or '-'} -> {r['new_size']} {r['new_key'] or '-'}"
    return line


def _range(range_: str | None) -> tuple[str, str]:
    """The two sides of ``A..B``, each an id, id prefix or label; both must be given."""
    from datamon.errors import UsageError
    from datamon.names import is_valid

    if not range_ or ".." not in range_:
        raise UsageError(
            "give a range A..B of two bundles, or --destination DIR",
            "e.g. `datamon bundle diff --repo R 3fa2c1..prod`",
        )
    a, _, b = range_.partition("..")
    a, b = a.strip(), b.strip()
    if not a or not b:
        raise UsageError(
            f"the range {range_!r} lacks {'both sides' if not a and not b else 'a side'}",
            "give both bundles: A..B, each a bundle id, an id prefix (6+ hex) or a label",
        )
    for side in (a, b):
        hexy = len(side) >= 6 and all(c in "0123456789abcdefABCDEF" for c in side)
        if not hexy and not is_valid(side):
            raise UsageError(
                f"{side!r} in the range {range_!r} is neither a bundle id nor a label name",
                "give A..B, each a bundle id, an id prefix (6+ hex) or a label",
            )
    return a, b


@bundle.command("update")
@repo_option()
@bundle_ref_options
@click.option("--destination", required=True, type=click.Path(), help="Directory of an earlier download.")
@click.option(
    "--force",
    is_flag=True,
    help="Also update a directory datamon did not create (files not in the bundle are deleted).",
)
@concurrency_option
@context_option
def bundle_update(
    repo: str, bundle: str | None, label: str | None, destination: str, force: bool, concurrency: int | None
) -> None:
    """Make a directory equal to a bundle, transferring only what differs.

    It also finishes an interrupted download. It refuses a directory that is not a datamon
    download unless --force is given.

    \b
    Example:
      datamon bundle update --repo mnist --label prod --destination ./mnist
    """
    from datamon.api.diff import update

    r = update(
        open_context(),
        repo,
        destination,
        bundle=bundle,
        label=label,
        progress=RichProgress("update"),
        force=force,
        concurrency=concurrency,
    )
    stderr(f"updated {destination}: {r.added} added, {r.updated} updated, {r.deleted} deleted")


@bundle.command("delete")
@repo_option()
@click.option("--bundle", required=True, metavar="ID", type=BundleId(), help="Bundle id or unique prefix.")
@click.option("--force-yes", is_flag=True, help="Do not ask for confirmation.")
@context_option
def bundle_delete(repo: str, bundle: str, force_yes: bool) -> None:
    """Delete a bundle's metadata (labels on it go too); `datamon gc` frees its space.

    \b
    Example:
      datamon bundle delete --repo mnist --bundle 3fa2c1 --force-yes
    """
    from datamon.api.bundles import resolve
    from datamon.cli.common import safe
    from datamon.errors import UsageError

    dm = open_context()
    b = resolve(dm, repo, bundle=bundle)
    used = dm.meta.runs_with_input([b.id])
    if used:
        stderr(
            f"warning: {len(used)} recorded run(s) read this bundle (run {used[0].id[:12]}…); `datamon gc` "
            "keeps its data for them unless given --drop-run-inputs"
        )
    if not force_yes:
        if not sys.stdin.isatty():
            raise UsageError(
                f"refusing to delete bundle {b.id[:12]} without confirmation", "pass --force-yes"
            )
        click.confirm(f"Delete bundle {b.id[:12]} ({safe(repr(b.message))})?", abort=True, err=True)
    dm.meta.delete_bundle(repo, b.id)
    stderr(f"deleted bundle {b.id}; run `datamon gc` to free its space")
