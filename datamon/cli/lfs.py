"""``datamon lfs agent|install|uninstall|import``: Git LFS objects stored in datamon."""

from __future__ import annotations

import logging
import os
import sys

import click

from datamon.cli.common import context_option, open_context, repo_option, stderr


class _SafeFormatter(logging.Formatter):
    """Log lines (tracebacks included) with secrets masked and control characters escaped."""

    def format(self, record: logging.LogRecord) -> str:
        from datamon.cli.common import safe

        return "\n".join(safe(line) for line in super().format(record).split("\n"))


def register(cli: click.Group) -> None:
    cli.add_command(lfs)


@click.group()
def lfs() -> None:
    """Keep Git LFS objects in datamon (a standalone custom transfer agent).

    \b
    Example:
      git lfs install                       # once per machine: the LFS filters
      datamon lfs install --repo models     # in the git repository
      git push                              # LFS objects now go to datamon
    """


def _scope_option(f):  # type: ignore[no-untyped-def]
    f = click.option(
        "--global", "scope", flag_value="global", help="Write to your global git config (~/.gitconfig)."
    )(f)
    return click.option(
        "--local",
        "scope",
        flag_value="local",
        default=True,
        help="Write to this repository's .git/config (the default).",
    )(f)


def _context_name() -> str | None:
    root = click.get_current_context().find_root()
    root.ensure_object(dict)
    name = root.obj.get("context_name")
    return str(name) if name else None


@lfs.command("agent")
@repo_option(required=False)
@click.option("-v", "--verbose", is_flag=True, help="Log every request on stderr (also on with GIT_TRACE).")
@context_option
def lfs_agent(repo: str | None, verbose: bool) -> int:
    """Serve git-lfs as its transfer agent over stdin/stdout (git-lfs starts it).

    Without --repo the repo is read from `git config datamon.repo`. Logs go to stderr,
    which git-lfs shows when run with GIT_TRACE=1.

    \b
    Example (what `datamon lfs install` configures):
      git config lfs.customtransfer.datamon.args "lfs agent --repo models"
    """
    from datamon.config import redact_text, redact_url
    from datamon.errors import DatamonError, NotFound, StoreUnavailable
    from datamon.lfs import protocol as P
    from datamon.lfs.agent import Agent, ApiTransfers, InitFailed
    from datamon.lfs.gitconfig import REPO_KEY, git_config_get, lfs_tmp_dir

    trace = os.environ.get("GIT_TRACE", "") not in ("", "0", "false")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_SafeFormatter(f"datamon lfs agent[{os.getpid()}]: %(levelname)s %(message)s"))
    logger = logging.getLogger("datamon.lfs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose or trace else logging.WARNING)
    logger.propagate = False

    # stdout belongs to the protocol: anything else printed by accident goes to stderr.
    proto_out = sys.stdout.buffer
    sys.stdout = sys.stderr

    def opener(init: P.Init) -> ApiTransfers:
        from datamon.api.lfs import check_repo

        name = repo or git_config_get(REPO_KEY)
        if not name:
            raise InitFailed(
                P.BAD_REQUEST,
                "no datamon repo given: run `datamon lfs install --repo NAME` "
                f"(or set `git config {REPO_KEY} NAME`)",
            )
        ctx = open_context()
        try:
            check_repo(ctx, name)
        except NotFound:
            raise InitFailed(
                P.NOT_FOUND,
                f"datamon repo {name!r} does not exist in context {ctx.name}; create it with "
                f"`datamon lfs install --repo {name}` or `datamon repo create --repo {name}`",
            ) from None
        except StoreUnavailable as e:
            raise InitFailed(
                P.UNAVAILABLE,
                f"cannot open the store of context {ctx.name}: {e}",
            ) from None
        except DatamonError:
            raise
        except Exception as e:
            logger.debug("opening the store failed", exc_info=True)
            raise InitFailed(
                P.UNAVAILABLE,
                f"cannot open the store of context {ctx.name} ({redact_url(ctx.blob_url)}): "
                f"{type(e).__name__}: {redact_text(str(e))}; "
                "check the context with `datamon context get`",
            ) from None
        return ApiTransfers(ctx, name, lambda: str(lfs_tmp_dir()))

    return Agent(opener, sys.stdin.buffer, proto_out).serve()


@lfs.command("install")
@repo_option(create=True)
@_scope_option
@click.option(
    "--concurrent/--no-concurrent",
    default=False,
    show_default=True,
    help="Let git-lfs start several agents (it starts them one after another, ~0.5 s each); "
    "one agent already uses every core.",
)
@click.option(
    "--path", "exe", metavar="PATH", help="The datamon executable git-lfs runs (default: this one)."
)
@context_option
def lfs_install(repo: str, scope: str, concurrent: bool, exe: str | None) -> None:
    """Make `git lfs push/pull/clone` in this repository store LFS objects in a datamon repo.

    Creates the datamon repo if it does not exist. The keys cannot live in .lfsconfig:
    to clone, see `docs/lfs.md` (git clone -c ... or GIT_LFS_SKIP_SMUDGE=1).

    \b
    Example:
      datamon lfs install --repo models
      datamon --context team lfs install --repo models --global
    """
    from datamon.api.lfs import check_repo
    from datamon.errors import NotFound
    from datamon.lfs.gitconfig import install, lfs_filters_installed

    dm = open_context()
    try:
        dm.meta.get_repo(repo)
    except NotFound:
        dm.meta.create_repo(repo, "Git LFS objects")
        stderr(f"created datamon repo {repo} for Git LFS objects (context {dm.name})")
    check_repo(dm, repo)
    r = install(repo, context=_context_name(), scope=scope, path=exe, concurrent=concurrent)  # type: ignore[arg-type]
    for key, value in r.settings.items():
        click.echo(f"{key}={value}")
    where = "every repository" if scope == "global" else "this repository"
    stderr(f"git-lfs in {where} now uses datamon repo {repo}")
    if not lfs_filters_installed():
        stderr("note: the Git LFS filters are not set up here; run `git lfs install` once")


@lfs.command("uninstall")
@_scope_option
def lfs_uninstall(scope: str) -> None:
    """Remove the git config keys `datamon lfs install` wrote (objects stay in datamon).

    \b
    Example:
      datamon lfs uninstall
    """
    from datamon.lfs.gitconfig import uninstall

    removed = uninstall(scope=scope)  # type: ignore[arg-type]
    for key in removed:
        click.echo(key)
    stderr(
        f"removed {len(removed)} setting(s)" if removed else "nothing to remove: datamon was not installed"
    )


@lfs.command("import")
@repo_option()
@click.option(
    "--objects",
    "objects_dir",
    type=click.Path(file_okay=False),
    help="A git-lfs object directory (default: this repository's .git/lfs/objects).",
)
@context_option
def lfs_import(repo: str, objects_dir: str | None) -> None:
    """Copy the objects of a local Git LFS store into a datamon repo (idempotent).

    Fetch everything first (`git lfs fetch --all`) to import every version.

    \b
    Example:
      git lfs fetch --all && datamon lfs import --repo models
    """
    from datamon.api.lfs import import_objects
    from datamon.cli.render import RichProgress, human_size
    from datamon.errors import UsageError
    from datamon.lfs.gitconfig import lfs_storage_dir

    if objects_dir is None:
        storage = lfs_storage_dir()
        if storage is None:
            raise UsageError("not inside a git repository", "cd into one, or pass --objects DIR")
        objects_dir = str(storage / "objects")
    r = import_objects(open_context(), repo, objects_dir, progress=RichProgress("importing"))
    click.echo(
        f"{r.objects} objects, {r.stored} newly stored, {human_size(r.bytes)} "
        f"({human_size(r.new_bytes)} new after deduplication)"
    )
    for oid, why in r.failed or []:
        stderr(f"skipped {oid}: {why}")
    if r.failed:
        raise UsageError(f"{len(r.failed)} object(s) did not match their oid", "run `git lfs fsck`")
