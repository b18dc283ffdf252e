"""``datamon forget`` and ``datamon repo squash``: drop old bundles by policy (docs/retention.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from datamon.cli.common import context_option, open_context, repo_option, stderr
from datamon.cli.render import emit, iso

if TYPE_CHECKING:
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


def register(cli: click.Group) -> None:
    cli.add_command(forget_cmd)
    repo_group = cli.commands.get("repo")
    if isinstance(repo_group, click.Group):
        repo_group.add_command(squash_cmd)
