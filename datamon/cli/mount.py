"""``datamon bundle mount``: read-only mount, ``mount new`` (commits on unmount), ``mount commit``."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import TYPE_CHECKING

import click

from datamon.cli.common import (
    LABEL,
    MESSAGE,
    BundleId,
    bundle_ref_options,
    context_option,
    open_context,
    repo_option,
    stderr,
)
from datamon.fuse import DEFAULT_PREFETCH

if TYPE_CHECKING:
    from datamon.meta.records import BundleRecord

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


class ByteSize(click.ParamType):
    """``500M``, ``2G``, ``1.5GiB`` or a number of bytes."""

    name = "SIZE"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        m = _SIZE.match(str(value))
        if not m:
            self.fail(f"{value!r} is not a size such as 512M or 2G", param, ctx)
        unit = " KMGT".index(m.group(2).upper() or " ")
        return int(float(m.group(1)) * (1 << (10 * unit)))


def _logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s datamon mount: %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def _log_path() -> str:
    from datamon import config

    return str(config.home() / "mounts" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")


def _child_argv(args: list[str]) -> list[str]:
    """The same command, to run in the foreground of a detached process."""
    root = click.get_current_context().find_root()
    name = (root.obj or {}).get("context_name")
    return [sys.executable, "-m", "datamon.cli", *(["--context", name] if name else []), *args]


@click.group("mount", invoke_without_command=True)
@repo_option(required=False)
@bundle_ref_options
@click.option("--mount", "mountpoint", type=click.Path(), help="Empty directory to mount on.")
@click.option("--cache-size", type=ByteSize(), help="Bound of the local chunk cache (e.g. 20G).")
@click.option(
    "--prefetch",
    type=click.IntRange(0, 64),
    default=DEFAULT_PREFETCH,
    show_default=True,
    help="Chunks to fetch ahead of sequential reads (0: off).",
)
@click.option("--daemonize", is_flag=True, help="Run in the background; return once mounted.")
@click.option("--debug", is_flag=True, hidden=True, help="Log every FUSE call.")
@context_option
@click.pass_context
def bundle_mount(
    ctx: click.Context,
    repo: str | None,
    bundle: str | None,
    label: str | None,
    mountpoint: str | None,
    cache_size: int | None,
    prefetch: int,
    daemonize: bool,
    debug: bool,
) -> None:
    """Mount a bundle (the latest without --bundle/--label) read-only on an empty directory.

    Files stream in on demand through the local chunk cache, every chunk verified. Ctrl-C or
    `fusermount3 -u DIR` unmounts.

    \b
    Example:
      datamon bundle mount --repo mnist --label prod --mount /mnt/mnist --daemonize
      fusermount3 -u /mnt/mnist
      datamon bundle mount new --repo mnist --mount /mnt/out --message "predictions" --from-label prod
    """
    if ctx.invoked_subcommand:
        return
    if not repo or not mountpoint:
        raise click.UsageError("--repo and --mount are required")
    from datamon.api.bundles import resolve
    from datamon.fuse.mount import check_mountpoint, load_fuse, mount_bundle, spawn

    dm = open_context()
    if cache_size is not None:
        dm.cache_bytes = cache_size
    b = resolve(dm, repo, bundle=bundle, label=label)
    mnt = check_mountpoint(mountpoint)
    load_fuse()
    if daemonize:
        args = ["bundle", "mount", "--repo", repo, "--bundle", b.id, "--mount", mnt]
        args += ["--prefetch", str(prefetch)]
        if cache_size is not None:
            args += ["--cache-size", str(cache_size)]
        log = _log_path()
        pid = spawn(_child_argv(args), mnt, log)
        stderr(f"mounted bundle {b.id[:12]} at {mnt} (pid {pid}, log {log}); unmount: fusermount3 -u {mnt}")
        return
    _logging(debug)
    stderr(f"mounting bundle {b.id[:12]} at {mnt}; Ctrl-C or `fusermount3 -u {mnt}` unmounts")
    mount_bundle(dm, repo, mnt, bundle=b.id, prefetch=prefetch, debug=debug)


@bundle_mount.command("new")
@repo_option()
@click.option("--mount", "mountpoint", required=True, type=click.Path(), help="Empty directory to mount on.")
@click.option("--message", required=True, type=MESSAGE, help="What the new bundle is.")
@click.option("--from-bundle", metavar="ID", type=BundleId(), help="Start from this bundle (copy-on-write).")
@click.option("--from-label", metavar="LABEL", type=LABEL, help="Start from the bundle this label points at.")
@click.option("--label", type=LABEL, help="Point this label at the new bundle.")
@click.option("--daemonize", is_flag=True, help="Run in the background; return once mounted.")
@click.option("--debug", is_flag=True, hidden=True, help="Log every FUSE call.")
@context_option
def bundle_mount_new(
    repo: str,
    mountpoint: str,
    message: str,
    from_bundle: str | None,
    from_label: str | None,
    label: str | None,
    daemonize: bool,
    debug: bool,
) -> None:
    """Mount a writable directory; on unmount its contents become a new bundle (id printed).

    It starts empty or from a bundle, whose files are fetched only when read and copied only
    when modified. The new bundle's parent is that bundle. Nothing changed: no bundle.

    \b
    Example:
      datamon bundle mount new --repo mnist --mount /mnt/out --message "clean" --from-label prod --label next
      cp -r results /mnt/out/ && rm /mnt/out/old.csv
      fusermount3 -u /mnt/out
    """
    from datamon import config
    from datamon.api.bundles import resolve
    from datamon.fuse.mount import check_mountpoint, load_fuse, mount_new, spawn

    if from_bundle and from_label:
        raise click.UsageError("give either --from-bundle or --from-label, not both")
    dm = open_context()
    dm.meta.get_repo(repo)
    given = from_bundle is not None or from_label is not None
    base = resolve(dm, repo, bundle=from_bundle, label=from_label) if given else None
    mnt = check_mountpoint(mountpoint)
    load_fuse()
    if daemonize:
        args = ["bundle", "mount", "new", "--repo", repo, "--mount", mnt, "--message", message]
        args += ["--from-bundle", base.id] if base else []
        args += ["--label", label] if label else []
        log = _log_path()
        pid = spawn(_child_argv(args), mnt, log)
        stderr(
            f"mounted a new bundle of {repo} at {mnt} (pid {pid}); after `fusermount3 -u {mnt}` "
            f"it is stored and its id written to {log} when pid {pid} exits"
        )
        return
    _logging(debug)
    what = f"bundle {base.id[:12]}" if base else "an empty directory"
    stderr(f"mounting {what} writable at {mnt}; Ctrl-C or `fusermount3 -u {mnt}` unmounts and commits")
    b = mount_new(
        dm,
        repo,
        mnt,
        message=message,
        from_bundle=base.id if base else None,
        label=label,
        staging_root=config.home() / "staging",
        debug=debug,
    )
    _report_new_bundle(b, label)


def _report_new_bundle(b: BundleRecord | None, label: str | None) -> None:
    """The id on stdout, a summary on stderr; or why there is none."""
    if b is None:
        stderr("nothing changed: no bundle was created")
        return
    click.echo(b.id)
    stderr(f"stored bundle {b.id[:12]}: {b.file_count} files" + (f", label {label}" if label else ""))


@bundle_mount.command("commit")
@click.option(
    "--staging",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="The staging directory a failed `mount new` named.",
)
@context_option
def bundle_mount_commit(staging: str) -> None:
    """Store the changes of a `mount new` whose commit failed, and print the new bundle's id.

    When storing the new bundle fails (store or database unreachable, Ctrl-C during the
    commit), `mount new` keeps the changes in a staging directory with a manifest.json and
    names it. Run this once the problem is fixed; the directory is removed afterwards.

    \b
    Example:
      datamon bundle mount commit --staging ~/.datamon/staging/20261201-120000-4242
    """
    from datamon.fuse.commit import retry

    _report_new_bundle(retry(open_context(), staging), None)


def register(cli: click.Group) -> None:
    bundle = cli.commands["bundle"]
    assert isinstance(bundle, click.Group)
    bundle.add_command(bundle_mount)
