"""``datamon forget``, ``repo squash``, ``repo delete files`` and ``repo rename`` (docs/retention.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from datamon.cli.common import NEW_REPO, context_option, open_context, repo_option, stderr
from datamon.cli.render import emit, iso

if TYPE_CHECKING:
    from datamon.api.erase import ErasePlan
    from datamon.api.forget import Decision


def _text(row: dict[str, object]) -> str:
    reasons = ", ".join(row["reasons"]) if row["reasons"] else "-"  # type: ignore[arg-type]
    return f"{row['action']}\t{row['id']}\t{row['time']}\t{reasons}\t{row['message']}"


def _report(decisions: list[Decision], as_json: bool, dry_run: bool) -> None:
    rows = []
    for d in decisions:
        row = d.as_dict()
        row["time"] = iso(d.bundle.created_ns)
        rows.append(row)
    emit(rows, as_json=as_json, fmt=None, text=_text)
    gone = sum(1 for d in decisions if not d.keep)
    verb = "would forget" if dry_run else "forgot"
    stderr(
        f"{verb} {gone} of {len(decisions)} bundles; kept {len(decisions) - gone}"
        + ("" if dry_run or not gone else "; run `datamon gc` to free their space")
    )


@click.command("forget")
@repo_option()
@click.option(
    "--keep-last", type=click.IntRange(0), default=0, metavar="N", help="Keep the N newest bundles."
)
@click.option(
    "--keep-hourly", type=click.IntRange(0), default=0, metavar="N", help="Newest of each of N hours."
)
@click.option(
    "--keep-daily", type=click.IntRange(0), default=0, metavar="N", help="Newest of each of N days (UTC)."
)
@click.option(
    "--keep-weekly", type=click.IntRange(0), default=0, metavar="N", help="Newest of each of N ISO weeks."
)
@click.option(
    "--keep-monthly", type=click.IntRange(0), default=0, metavar="N", help="Newest of each of N months."
)
@click.option(
    "--keep-yearly", type=click.IntRange(0), default=0, metavar="N", help="Newest of each of N years."
)
@click.option(
    "--keep-within",
    metavar="DURATION",
    default=None,
    help="Keep bundles newer than the newest minus this (e.g. 30d).",
)
@click.option(
    "--keep-labelled/--no-keep-labelled",
    default=True,
    show_default=True,
    help="Keep bundles a label points at.",
)
@click.option(
    "--keep-run-inputs/--no-keep-run-inputs",
    default=True,
    show_default=True,
    help="Keep bundles that recorded runs read to make an output (lineage).",
)
@click.option("--dry-run", is_flag=True, help="Print what would be forgotten and why each bundle is kept.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per bundle.")
@context_option
def forget_cmd(
    repo: str,
    keep_last: int,
    keep_hourly: int,
    keep_daily: int,
    keep_weekly: int,
    keep_monthly: int,
    keep_yearly: int,
    keep_within: str | None,
    keep_labelled: bool,
    keep_run_inputs: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Forget the bundles of a repo that a retention policy does not keep (like restic's forget).

    Each --keep-* rule keeps the newest bundle of each of the N most recent hours, days, weeks,
    months or years that hold one; a bundle kept by any rule stays. Labelled bundles and inputs of
    recorded runs stay unless --no-keep-labelled / --no-keep-run-inputs. Space is freed by
    `datamon gc`.

    \b
    Example:
      datamon forget --repo mnist --keep-last 5 --keep-daily 7 --keep-monthly 12 --dry-run
    """
    from datamon.api.forget import Policy, forget
    from datamon.api.gc import parse_duration

    policy = Policy(
        last=keep_last,
        hourly=keep_hourly,
        daily=keep_daily,
        weekly=keep_weekly,
        monthly=keep_monthly,
        yearly=keep_yearly,
        within_ns=parse_duration(keep_within) if keep_within else 0,
        keep_labelled=keep_labelled,
        keep_run_inputs=keep_run_inputs,
    )
    _report(forget(open_context(), repo, policy, dry_run=dry_run), as_json, dry_run)


@click.command("squash")
@repo_option()
@click.option("--retain-labels", is_flag=True, help="Also keep every bundle a label points at.")
@click.option("--dry-run", is_flag=True, help="Print what would be forgotten.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per bundle.")
@context_option
def squash_cmd(repo: str, retain_labels: bool, dry_run: bool, as_json: bool) -> None:
    """Keep only the latest bundle of a repo (and, with --retain-labels, the labelled ones).

    \b
    Example:
      datamon repo squash --repo mnist --retain-labels
    """
    from datamon.api.forget import squash

    _report(squash(open_context(), repo, retain_labels=retain_labels, dry_run=dry_run), as_json, dry_run)


def _erase_text(row: dict[str, object]) -> str:
    if row["type"] == "held":
        where = f"{row['kind']} {str(row['ref'])[:12]}" if row["ref"] else str(row["kind"])
        what = "shares chunks with an erased file" if row["shares_chunks"] else "same bytes as an erased file"
        return f"held\t{row['repo']}\t{where}\t{row['path']}\t{what} ({str(row['key'])[:12]})"
    if row["type"] == "missing":
        return f"missing\t{row['path']}\tin no bundle"
    if row["type"] == "input":
        return (
            f"input\t{str(row['old'])[:12]}\ttree {str(row['old_tree'])[:12]} -> {str(row['new_tree'])[:12]}"
        )
    removed = ", ".join(row["removed"]) if row["removed"] else "(parent rewritten)"  # type: ignore[arg-type]
    return (
        f"{row['type']}\t{str(row['old'])[:12]} -> {str(row['new'])[:12]}\t{iso(row['time_ns'])}\t{removed}"  # type: ignore[arg-type]
    )


def _erase_report(plan: ErasePlan, as_json: bool) -> None:
    rows: list[dict[str, object]] = [c.as_dict() for c in plan.rewritten]
    rows += [
        {"type": "input", "old": r.old_id, "old_tree": r.old_tree, "new_tree": r.new_tree}
        for r in plan.input_rewrites
    ]
    rows += [h.as_dict() for h in plan.held]
    rows += [{"type": "missing", "path": p} for p in plan.missing]
    emit(rows, as_json=as_json, fmt=None, text=_erase_text)


@click.command("files")
@repo_option(required=False)
@click.option(
    "--files",
    "files_list",
    type=click.File("r"),
    required=True,
    metavar="LIST",
    help="File listing the paths to remove, one per line, relative to the bundle root (a directory "
    "takes everything below it).",
)
@click.option("--force-yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--dry-run", is_flag=True, help="Print what would be rewritten and who else holds the bytes.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per rewritten bundle and finding.")
@context_option
@click.pass_context
def delete_files_cmd(
    ctx: click.Context, repo: str | None, files_list: object, force_yes: bool, dry_run: bool, as_json: bool
) -> None:
    """Remove paths from every bundle of a repo, for data that must be erased.

    Each bundle holding a listed path is rewritten under a new id (so is each bundle whose parent
    was); labels and their history move to the new ids, and `bundle get OLD` says what OLD became.
    Paths of other live bundles (any repo) that hold the same bytes are reported first: those bytes
    stay. `datamon gc` then removes the erased bytes from the blob store (once their packs are
    older than --grace). See docs/retention.md.

    \b
    Example:
      printf 'secrets/token.txt\\nraw/people.csv\\n' > erase.txt
      datamon repo delete files --repo mnist --files erase.txt --dry-run
      datamon repo delete files --repo mnist --files erase.txt --force-yes && datamon gc
    """
    import sys

    from datamon.api.erase import apply_erase, plan_erase, read_list
    from datamon.errors import UsageError

    parent = ctx.obj if isinstance(ctx.obj, dict) else {}
    repo = repo or parent.get("delete_repo")
    force_yes = force_yes or bool(parent.get("delete_force_yes"))
    if not repo:
        raise click.UsageError("Missing option '--repo'.", ctx=ctx)
    paths = read_list(files_list)  # type: ignore[arg-type]
    dm = open_context()
    dm.meta.get_repo(repo)
    if not paths:
        raise UsageError("the list names no path", "list one path of the bundles per line")
    if not (force_yes or dry_run) and not sys.stdin.isatty():
        raise UsageError(
            f"refusing to delete files from every bundle of repo {repo!r} without confirmation",
            "pass --force-yes (--dry-run shows what would change)",
        )
    plan = plan_erase(dm, repo, paths)
    _erase_report(plan, as_json)
    if plan.held:
        stderr(
            f"warning: {len(plan.held)} live references listed above (held) hold some of the erased bytes: "
            "those bytes stay in the blob store"
        )
    n, total = len(plan.rewritten), len(plan.changes)
    if dry_run:
        stderr(f"would rewrite {n} of {total} bundles of repo {repo} ({len(plan.erased_files)} files erased)")
        return
    if not n and not plan.input_rewrites:
        stderr(f"nothing to do: no bundle of repo {repo} holds a listed path")
        return
    if not force_yes:
        click.confirm(
            f"Rewrite {n} of {total} bundles of repo {repo!r} without the listed paths?", abort=True, err=True
        )
    apply_erase(dm, plan)
    stderr(
        f"rewrote {n} of {total} bundles of repo {repo} ({len(plan.erased_files)} files erased); "
        "run `datamon gc` to remove the erased bytes from the blob store"
    )


@click.command("rename")
@repo_option()
@click.option("--new-name", required=True, metavar="NAME", type=NEW_REPO, help="The repo's new name.")
@context_option
def rename_cmd(repo: str, new_name: str) -> None:
    """Rename a repo; its bundles, labels, label history and runs follow.

    Bundle ids do not change. The old name stays reserved for this repo (exit 3 if NAME is taken),
    and commands given the old name say what the repo is called now.

    \b
    Example:
      datamon repo rename --repo mnist --new-name mnist-digits
    """
    from datamon.api.rename import rename_repo

    rename_repo(open_context(), repo, new_name)
    stderr(f"renamed repo {repo} to {new_name}")


def register(cli: click.Group) -> None:
    cli.add_command(forget_cmd)
    repo_group = cli.commands.get("repo")
    if isinstance(repo_group, click.Group):
        repo_group.add_command(squash_cmd)
        repo_group.add_command(rename_cmd)
        delete = repo_group.commands.get("delete")
        if isinstance(delete, click.Group):
            delete.add_command(delete_files_cmd)
