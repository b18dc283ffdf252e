"""``datamon verify``, ``datamon gc`` and ``datamon admin reindex``."""

from __future__ import annotations

import sys

import click

from datamon.cli.common import bundle_ref_options, context_option, open_context, repo_option, safe, stderr
from datamon.cli.render import human_size


def _json_line(obj: dict[str, object]) -> None:
    from datamon.cli.render import json_line

    sys.stdout.write(json_line(obj) + "\n")


@click.command("verify")
@repo_option(required=False)
@bundle_ref_options
@click.option("--full", is_flag=True, help="Also read, decompress and hash every chunk (reads all data).")
@click.option(
    "--repair",
    is_flag=True,
    help="Drop index rows of damaged objects, so that uploading the original data again rewrites them.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per problem, then a summary.")
@context_option
def verify_cmd(
    repo: str | None, bundle: str | None, label: str | None, full: bool, repair: bool, as_json: bool
) -> None:
    """Check that every object the bundles reference is stored and intact.

    Without options every bundle of every repo is checked: each object must be in the index
    and in its pack (read from pack footers, no data). --full also reads and hashes all data.
    Each problem is reported with the bundles and paths it affects; exit code 4 if any.

    \b
    Example:
      datamon verify
      datamon verify --repo mnist --label prod --full
      datamon verify --full --repair   # then upload the original data again
    """
    from datamon.api.verify import verify
    from datamon.errors import IntegrityError

    r = verify(open_context(), repo=repo, bundle=bundle, label=label, full=full, repair=repair)
    if as_json:
        for a in r.affected:
            _json_line({"type": "affected", **a.as_dict()})
        for key, p in sorted(r.problems.items()):
            _json_line({"type": "problem", "object": key, "problem": p.kind, "detail": p.detail})
        for p in r.run_problems:
            _json_line({"type": "run", "run": p.key, "problem": p.kind, "detail": p.detail})
        _json_line({"type": "summary", **r.summary()})
    else:
        for a in r.affected:
            p = a.problem
            which = a.bundle if a.bundle.startswith("diamond ") else a.bundle[:12]  # a diamond's split
            fields = (a.repo, which, a.path or "(record)", f"{p.kind}: object {p.key} {p.detail}")
            click.echo("\t".join(safe(f) for f in fields))
        for p in r.run_problems:
            click.echo("\t".join(safe(f) for f in ("(run)", p.key[:12], "", f"{p.kind}: {p.detail}")))
    stderr(
        f"verified {r.bundles} bundles ({'full' if full else 'fast'}): {r.objects} objects, "
        f"{human_size(r.bytes)} in {r.packs} packs, {r.seconds:.1f}s; "
        + ("no problems" if r.ok else f"{len(r.problems)} bad objects, {len(r.affected)} paths affected")
        + (f"; {r.runs} runs, {len(r.run_problems)} with problems" if r.runs else "")
    )
    if r.dropped_rows:
        stderr(f"repair: dropped {r.dropped_rows} index rows; upload the original data again to restore them")
    if not r.ok and not r.problems and not r.affected:
        raise IntegrityError(
            f"{len(r.run_problems)} run record problems",
            "see the runs above: `datamon admin reindex` restores missing blob copies of runs; a run whose "
            "bundles were deleted keeps its record",
        )
    if not r.ok:
        raise IntegrityError(
            f"{len(r.problems)} objects are missing or damaged",
            "see the paths above; `datamon verify --full --repair` then uploading the original data again "
            "repairs them, or delete the affected bundles",
        )


@click.command("gc")
@click.option(
    "--grace",
    default="24h",
    show_default=True,
    metavar="DURATION",
    help="Keep anything written or reused more recently than this (e.g. 24h, 30m, 7d). "
    "Must exceed your longest upload.",
)
@click.option("--dry-run", is_flag=True, help="Report what would be removed; change nothing.")
@click.option(
    "--drop-run-inputs",
    is_flag=True,
    help="Also remove deleted bundles that recorded runs read (their runs can no longer be reproduced).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@context_option
def gc_cmd(grace: str, dry_run: bool, drop_run_inputs: bool, as_json: bool) -> None:
    """Remove objects no bundle of any repo reaches, and give their space back.

    Packs that are entirely garbage are deleted; packs partly garbage are rewritten. Nothing
    written or reused by an upload within the grace period is touched, so gc can run while
    others upload. Only one gc runs at a time (exit 3 otherwise).

    \b
    Example:
      datamon gc --dry-run
      datamon gc --grace 48h
    """
    from datamon.api.gc import gc, parse_duration

    r = gc(
        open_context(), grace_ns=parse_duration(grace), dry_run=dry_run, keep_run_inputs=not drop_run_inputs
    )
    if as_json:
        _json_line(r.as_dict())
    would = "would free" if dry_run else "freed"
    for s in r.skipped:
        stderr(f"skipped {s}")
    stderr(
        f"gc{' (dry run)' if dry_run else ''}: {r.bundles} bundles reach {r.reachable_objects} objects; "
        f"{r.garbage_objects} unreachable objects ({human_size(r.garbage_bytes)}) in packs older than "
        f"{grace}; {r.deleted_packs} packs deleted, {r.repacked_packs} rewritten into {r.new_packs}, "
        f"{r.deleted_orphans} of {r.orphans} orphan packs deleted; {would} {human_size(r.freed_bytes)} "
        f"in {r.seconds:.1f}s"
        + (f"; {r.adopted_objects} objects re-indexed from orphan packs" if r.adopted_objects else "")
        + (f"; {r.restored_objects} kept for running uploads" if r.restored_objects else "")
        + (f"; kept {r.run_inputs} deleted bundle(s) that recorded runs read" if r.run_inputs else "")
        + (f"; {r.erased_purged} erased objects gone from every pack" if r.erased_purged else "")
        + (
            f"; {r.erased_waiting} erased objects still stored (held by a live bundle, or in packs "
            "younger than the grace period)"
            if r.erased_waiting
            else ""
        )
        + (
            f"; {r.index_nodes} file index nodes no bundle uses ({r.index_rows} rows) "
            + ("would go" if dry_run else "removed")
            if r.index_nodes
            else ""
        )
    )


@click.group("admin")
def admin() -> None:
    """Maintenance commands for the store's operators."""


@admin.command("reindex")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option("--files", is_flag=True, help="Also drop the file index (`datamon query`) and rebuild it all.")
@context_option
def reindex_cmd(as_json: bool, files: bool) -> None:
    """Rebuild the object index from the packs in the blob store (safe to repeat).

    The recovery path when the metadata database is lost or restored from an old backup.
    Repos, bundles and labels live only in the database: restore them from its backup.

    \b
    Example:
      datamon admin reindex
    """
    from datamon.api.reindex import reindex

    r = reindex(open_context(), files=files)
    if as_json:
        _json_line(r.as_dict())
    for p in r.problems:
        stderr(f"problem: {p}")
    for n in r.renamed:
        stderr(f"replayed repo rename {n} (recorded in the blob store, unknown to the database)")
    stderr(
        f"reindexed {r.packs} packs ({r.new_packs} new to the index), {r.objects} objects: "
        f"{r.added} index rows added, {r.dropped_filemaps} incomplete file maps dropped; "
        f"{r.runs} run records ({r.added_runs} rows rebuilt, {r.restored_run_blobs} blob copies restored), "
        + (
            f"{r.renames} repo renames ({r.replayed_renames} replayed, {r.restored_rename_blobs} blob copies "
            "restored), "
            if r.renames or r.restored_rename_blobs
            else ""
        )
        + f"{r.indexed_bundles} bundles added to the file index, in {r.seconds:.1f}s"
    )


def register(cli: click.Group) -> None:
    cli.add_command(verify_cmd)
    cli.add_command(gc_cmd)
    cli.add_command(admin)
