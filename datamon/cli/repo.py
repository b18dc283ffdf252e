"""``datamon repo create|list|get|delete``."""

from __future__ import annotations

import click

from datamon.cli.common import Text, batch_size_option, context_option, open_context, repo_option, stderr
from datamon.cli.render import emit, iso, output_options

_WITH_SIZE = click.option(
    "--with-size",
    is_flag=True,
    help="Add the latest bundle's bytes and the stored bytes the repo's bundles reference (walks them all).",
)


def _row(r: object, dm: object = None) -> dict[str, object]:
    row: dict[str, object] = {
        "name": r.name,  # type: ignore[attr-defined]
        "repo": r.name,  # type: ignore[attr-defined]
        "description": r.description,  # type: ignore[attr-defined]
        "time": iso(r.created_ns),  # type: ignore[attr-defined]
        "bundles": r.bundle_count,  # type: ignore[attr-defined]
        "creator": r.creator_name,  # type: ignore[attr-defined]
        "creator_email": r.creator_email,  # type: ignore[attr-defined]
    }
    if dm is not None:  # --with-size
        from datamon.api.sizes import repo_size

        s = repo_size(dm, r.name)  # type: ignore[arg-type, attr-defined]
        row.update(size=s.logical, stored=s.stored, objects=s.objects, missing_objects=s.missing)
    return row


def _text(row: dict[str, object]) -> str:
    who = f"{row['creator']} <{row['creator_email']}>" if row["creator"] or row["creator_email"] else "-"
    size = f"\t{row['size']} B logical, {row['stored']} B stored" if "size" in row else ""
    names = row.get("former_names")
    former = f"\t(formerly {', '.join(str(n) for n in names)})" if isinstance(names, list) and names else ""
    return (
        f"{row['name']}\t{row['time']}\t{row['bundles']} bundles\t{who}\t{row['description']}{size}{former}"
    )


@click.group()
def repo() -> None:
    """Create, list, inspect and delete repos."""


@repo.command("create")
@repo_option(create=True)
@click.option("--description", default="", type=Text("description"), help="What the repo holds.")
@context_option
def repo_create(repo: str, description: str) -> None:
    """Create a repo.

    \b
    Example:
      datamon repo create --repo mnist --description "handwritten digits"
    """
    open_context().create_repo(repo, description)
    stderr(f"created repo {repo}")


@repo.command("list")
@_WITH_SIZE
@batch_size_option
@output_options
@context_option
def repo_list(with_size: bool, batch_size: int | None, as_json: bool, fmt: str | None) -> None:
    """List repos.

    \b
    Example:
      datamon repo list --format '{name}'
      datamon repo list --with-size --json
    """
    dm = open_context()
    sized = dm if with_size else None
    emit((_row(r, sized) for r in dm.meta.list_repos()), as_json=as_json, fmt=fmt, text=_text)


@repo.command("get")
@repo_option()
@_WITH_SIZE
@output_options
@context_option
def repo_get(repo: str, with_size: bool, as_json: bool, fmt: str | None) -> None:
    """Show one repo.

    \b
    Example:
      datamon repo get --repo mnist --with-size --json
    """
    dm = open_context()
    row = _row(dm.meta.get_repo(repo), dm if with_size else None)
    row["former_names"] = dm.meta.repo_names(repo)[1:]
    emit([row], as_json=as_json, fmt=fmt, text=_text)


@repo.group("delete", invoke_without_command=True)
@repo_option(required=False)
@click.option("--force-yes", is_flag=True, help="Do not ask for confirmation.")
@context_option
@click.pass_context
def repo_delete(ctx: click.Context, repo: str | None, force_yes: bool) -> None:
    """Delete a repo with its bundles and labels (metadata only; `datamon gc` frees the space).

    `datamon repo delete files` removes paths from every bundle of a repo instead.

    \b
    Example:
      datamon repo delete --repo scratch --force-yes
      datamon repo delete files --repo mnist --files erase.txt --force-yes
    """
    if ctx.invoked_subcommand is not None:
        ctx.ensure_object(dict)
        ctx.obj["delete_repo"] = repo
        ctx.obj["delete_force_yes"] = force_yes
        return
    if repo is None:
        raise click.UsageError("Missing option '--repo'.", ctx=ctx)
    dm = open_context()
    r = dm.meta.get_repo(repo)
    if not force_yes:
        import sys

        from datamon.errors import UsageError

        if not sys.stdin.isatty():
            raise UsageError(f"refusing to delete repo {repo!r} without confirmation", "pass --force-yes")
        from datamon.cli.common import safe

        click.confirm(
            f"Delete repo {safe(repr(repo))} and its {r.bundle_count} bundles?", abort=True, err=True
        )
    dm.meta.delete_repo(repo)
    stderr(f"deleted repo {repo}; run `datamon gc` to free its space")
