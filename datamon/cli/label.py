"""``datamon label set|get|list|history``."""

from __future__ import annotations

import click

from datamon.cli.common import (
    LABEL,
    LABEL_LOOKUP,
    BundleId,
    batch_size_option,
    context_option,
    open_context,
    repo_option,
    stderr,
)
from datamon.cli.render import emit, iso, label_row, output_options


def _text(r: dict[str, object]) -> str:
    return f"{r['label']}\t{r['bundle']}\t{r['time']}\t{r['contributor']}"


@click.group()
def label() -> None:
    """Movable names for bundles (moved by compare-and-swap)."""


@label.command("set")
@repo_option()
@click.option("--label", "name", required=True, type=LABEL, help="Label name.")
@click.option(
    "--bundle", metavar="ID", type=BundleId(), help="Bundle id or prefix (default: the latest bundle)."
)
@click.option(
    "--expected",
    metavar="ID",
    help="Only move if the label points at this bundle now ('none': must not exist).",
)
@output_options
@context_option
def label_set(
    repo: str, name: str, bundle: str | None, expected: str | None, as_json: bool, fmt: str | None
) -> None:
    """Point a label at a bundle. With --expected, exit 3 if someone moved it first.

    \b
    Example:
      datamon label set --repo mnist --label prod --bundle 3fa2c1 --expected 9be0d4
    """
    from datamon.api.bundles import resolve
    from datamon.api.labels import set_label

    dm = open_context()
    target = resolve(dm, repo, bundle=bundle).id
    kw: dict[str, object] = {}
    if expected is not None:
        kw["expected"] = None if expected.strip().lower() in ("none", "") else expected
    lab = set_label(dm, repo, name, target, **kw)
    if as_json or fmt:
        emit([label_row(lab)], as_json=as_json, fmt=fmt, text=_text)
    stderr(f"label {name} -> {lab.bundle_id}")


@label.command("get")
@repo_option()
@click.option("--label", "name", required=True, type=LABEL, help="Label name.")
@output_options
@context_option
def label_get(repo: str, name: str, as_json: bool, fmt: str | None) -> None:
    """Show the bundle a label points at.

    \b
    Example:
      datamon label get --repo mnist --label prod --format '{bundle}'
    """
    emit([label_row(open_context().meta.get_label(repo, name))], as_json=as_json, fmt=fmt, text=_text)


@label.command("list")
@repo_option()
@click.option("--prefix", default="", metavar="P", help="Only labels whose names start with P.")
@batch_size_option
@output_options
@context_option
def label_list(repo: str, prefix: str, batch_size: int | None, as_json: bool, fmt: str | None) -> None:
    """List a repo's labels.

    \b
    Example:
      datamon label list --repo mnist --prefix release- --json
    """
    dm = open_context()
    labels = dm.meta.list_labels(repo, prefix)
    if not labels:
        dm.meta.get_repo(repo)  # NotFound for an unknown repo
    emit((label_row(lab) for lab in labels), as_json=as_json, fmt=fmt, text=_text)


@label.command("delete")
@repo_option()
@click.option("--label", "name", required=True, type=LABEL_LOOKUP, help="Label name.")
@context_option
def label_delete(repo: str, name: str) -> None:
    """Delete a label (its history is kept); the bundle stays.

    Works for any stored name, also one an older datamon accepted that is refused today.

    \b
    Example:
      datamon label delete --repo mnist --label old
    """
    dm = open_context()
    dm.meta.delete_label(repo, name, contributor=str(dm.contributor))
    stderr(f"deleted label {name!r} of repo {repo!r}")


@label.command("history")
@repo_option()
@click.option("--label", "name", type=LABEL_LOOKUP, help="Only this label.")
@output_options
@context_option
def label_history(repo: str, name: str | None, as_json: bool, fmt: str | None) -> None:
    """Show how labels moved, newest first.

    \b
    Example:
      datamon label history --repo mnist --label prod
    """
    dm = open_context()
    events = dm.meta.label_history(repo, name)
    if not events:
        if name:
            dm.meta.get_label(repo, name)
        else:
            dm.meta.get_repo(repo)
    rows = (
        {
            "label": e.name,
            "old": e.old_bundle_id,
            "new": e.new_bundle_id,
            "bundle": e.new_bundle_id,
            "time": iso(e.time_ns),
            "contributor": e.contributor,
        }
        for e in events
    )
    emit(
        rows,
        as_json=as_json,
        fmt=fmt,
        text=lambda r: (
            f"{r['time']}\t{r['label']}\t{r['old'] or '-'} -> {r['new'] or '(deleted)'}\t{r['contributor']}"
        ),
    )
