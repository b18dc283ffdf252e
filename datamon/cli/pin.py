"""``datamon lock add|update|remove|show|verify`` and ``datamon pull``: data pinned like dependencies."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import click

from datamon.cli.common import LABEL, BundleId, Name, context_option, repo_option, safe, stderr
from datamon.cli.render import emit, human_size, output_options

if TYPE_CHECKING:
    from datamon.api.lock import LockFile
    from datamon.api.pull import Contexts

DATASET = Name("dataset", strict=True)


def _lock_option(f: Any) -> Any:
    return click.option(
        "--lock",
        "lock_file",
        metavar="FILE",
        type=click.Path(dir_okay=True),
        help="Lock file to use (default: datamon.lock here or in a parent directory).",
    )(f)


def _load(lock_file: str | None, *, create: bool = False) -> LockFile:
    from datamon.api import lock

    return lock.load(lock.locate(lock_file, create=create), missing_ok=create)


def _contexts() -> Contexts:
    from datamon.api.pull import Contexts

    root = click.get_current_context().find_root()
    root.ensure_object(dict)
    pool = Contexts(root.obj.get("context_name"))
    root.call_on_close(pool.close)
    return pool


def _context_name() -> str | None:
    """The context a new pin records: the one chosen for this run, unless it is the default."""
    from datamon.config import DEFAULT_CONTEXT

    root = click.get_current_context().find_root()
    name = (root.obj or {}).get("context_name") or os.environ.get("DATAMON_CONTEXT")
    return None if not name or name == DEFAULT_CONTEXT else str(name)


@click.group("lock")
def lock_group() -> None:
    """Pin bundles in datamon.lock (commit it), so every build sees the same bytes.

    \b
    Example:
      datamon lock add mnist --repo mnist --label prod --path data/mnist
      datamon pull && pytest && datamon lock verify
      datamon lock update --check     # exit 1 when a label moved since it was pinned
    """


@lock_group.command("add")
@click.argument("name", type=DATASET)
@repo_option()
@click.option(
    "--label", type=LABEL, help="Pin the bundle this label points at now (and follow it on update)."
)
@click.option("--bundle", metavar="ID", type=BundleId(), help="Pin this bundle (id or unique prefix).")
@click.option(
    "--path", "path", required=True, type=click.Path(), help="Directory to pull it to (inside the project)."
)
@click.option("--force", is_flag=True, help="Replace an existing pin of the same name.")
@_lock_option
@context_option
def lock_add(
    name: str, repo: str, label: str | None, bundle: str | None, path: str, force: bool, lock_file: str | None
) -> None:
    """Pin dataset NAME to a bundle of a repo, pulled to --path.

    The lock file is found like git finds .git (or created at the top of the git work tree);
    --path is stored relative to it. The context (--context) is recorded unless it is the default.

    \b
    Example:
      datamon lock add mnist --repo mnist --label prod --path data/mnist
      datamon --context team lock add weights --repo resnet --bundle 3fa2c1 --path models/resnet
    """
    from datamon.api.lock import add

    context = _context_name()
    lf = _load(lock_file, create=True)
    pin = add(
        _contexts().get(context),
        lf,
        name,
        repo=repo,
        path=path,
        bundle=bundle,
        label=label,
        context=context,
        replace_existing=force,
    )
    click.echo(pin.bundle)
    stderr(
        f"pinned {pin.name} to bundle {pin.bundle[:12]} of {pin.repo}"
        + (f" (label {pin.label})" if pin.label else "")
        + f": {pin.files} files, {human_size(pin.size)}, pulled to {pin.path}; in {lf.path}"
    )


@lock_group.command("update")
@click.argument("names", nargs=-1, type=DATASET)
@click.option("--check", is_flag=True, help="Change nothing; exit 1 if an update would move a pin.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per dataset.")
@_lock_option
@context_option
def lock_update(names: tuple[str, ...], check: bool, as_json: bool, lock_file: str | None) -> None:
    """Move pins to where their labels point now; print old → new and the files that change.

    Pins taken with --bundle stay. With --check nothing is written, and the exit code is 1 if
    any pin would move: a CI job that warns about stale pins.

    \b
    Example:
      datamon lock update                 # all datasets
      datamon lock update mnist --check
    """
    from datamon.api.lock import plan_update

    lf = _load(lock_file)
    pool = _contexts()
    plans = [plan_update(pool.get(p.context), p) for p in lf.select(names)]
    for u in plans:
        if as_json:
            emit([u.as_dict()], as_json=True, fmt=None, text=str)
        elif u.old.label is None:
            click.echo(safe(f"{u.old.name}: {u.old.bundle[:12]} (pinned by id, no label to follow)"))
        elif not u.moved:
            click.echo(safe(f"{u.old.name}: {u.old.bundle[:12]} (label {u.old.label}) up to date"))
        else:
            click.echo(
                safe(
                    f"{u.old.name}: {u.old.bundle[:12]} → {u.new.bundle[:12]} (label {u.old.label}): "
                    f"{u.added} added, {u.changed} changed, {u.deleted} deleted"
                )
            )
    moved = [u for u in plans if u.moved]
    if check:
        if moved:
            stderr(f"{len(moved)} pins are behind their labels; run `datamon lock update` to move them")
            raise SystemExit(1)
        return
    if any(u.new != u.old for u in plans):
        for u in plans:
            lf.pins[u.new.name] = u.new
        lf.save()
    stderr(
        f"{len(moved)} of {len(plans)} pins moved in {lf.path}" + ("; run `datamon pull`" if moved else "")
    )


@lock_group.command("remove")
@click.argument("name", type=DATASET)
@_lock_option
def lock_remove(name: str, lock_file: str | None) -> None:
    """Remove dataset NAME from the lock (its pulled directory is left as it is).

    \b
    Example:
      datamon lock remove mnist
    """
    from datamon.api.lock import remove

    lf = _load(lock_file)
    pin = remove(lf, name)
    stderr(f"removed {pin.name} (bundle {pin.bundle[:12]}) from {lf.path}; {pin.path} was left in place")


def _tabbed(*fields: object) -> str:
    """Fields escaped one by one (``safe``), then joined by tabs."""
    return "\t".join(safe(f) for f in fields)


def _pin_text(row: dict[str, Any]) -> str:
    extra = [f"{k} {row[k]}" for k in ("label", "context") if row.get(k)]
    return _tabbed(row["name"], row["repo"], row["bundle"][:12], f"{row['files']} files", row["path"], *extra)


@lock_group.command("show")
@output_options
@_lock_option
def lock_show(as_json: bool, fmt: str | None, lock_file: str | None) -> None:
    """List the pinned datasets (no store needed).

    \b
    Example:
      datamon lock show
      datamon lock show --json
      datamon lock show --format '{name} {bundle}'
    """
    lf = _load(lock_file)
    rows = [{"name": p.name, **p.as_dict()} for p in lf.select(())]
    if as_json or fmt:
        emit(rows, as_json=as_json, fmt=fmt, text=_pin_text)
    else:
        for row in rows:
            click.echo(_pin_text(row))


def _destination(lf: LockFile, names: tuple[str, ...], path: str | None) -> dict[str, str]:
    pins = lf.select(names)
    if path is not None:
        if len(pins) != 1 or not names:
            raise click.UsageError("--path needs exactly one dataset NAME")
        return {pins[0].name: os.path.abspath(path)}
    return {p.name: str(lf.destination(p)) for p in pins}


@lock_group.command("verify")
@click.argument("names", nargs=-1, type=DATASET)
@click.option("--path", type=click.Path(), help="Check this directory instead of the pinned path (one NAME).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per dataset.")
@_lock_option
def lock_verify(names: tuple[str, ...], path: str | None, as_json: bool, lock_file: str | None) -> None:
    """Check pulled directories against their pins, without the store: exit 4 on any difference.

    Files are hashed (unless the stat cache knows them unchanged) and compared with the pinned
    bundle's trees, saved locally by `datamon pull` and checked against the lock's tree key.
    Symlinks are never followed. Run it after a step that must not modify its inputs.

    \b
    Example:
      datamon pull && python train.py && datamon lock verify
    """
    from datamon import config
    from datamon.api.pull import verify_pin
    from datamon.errors import IntegrityError

    lf = _load(lock_file)
    state = config.home() / "cache"
    dests = _destination(lf, names, path)
    bad = []
    for name, dest in dests.items():
        c = verify_pin(state, lf.get(name), dest)
        if as_json:
            emit([c.as_dict()], as_json=True, fmt=None, text=str)
        else:
            for what, paths in (("added", c.added), ("missing", c.missing), ("changed", c.changed)):
                for p in paths:
                    click.echo(_tabbed(name, what, p or "."))
        if c.problem:
            stderr(f"{name}: {c.problem}")
        if not c.ok:
            bad.append(c)
        stderr(
            f"{name}: {'ok' if c.ok else 'DIFFERS'}: {c.files} files checked, "
            f"{human_size(c.hashed_bytes)} hashed, {dest}"
        )
    if bad:
        n = sum(len(c.added) + len(c.missing) + len(c.changed) for c in bad)
        raise IntegrityError(
            f"{len(bad)} of {len(dests)} datasets differ from their pins ({n} paths listed above)",
            "restore them with `datamon pull`",
        )


@click.command("pull")
@click.argument("names", nargs=-1, type=DATASET)
@click.option(
    "--path", type=click.Path(), help="Pull to this directory instead of the pinned path (one NAME)."
)
@click.option(
    "--mount", "mount", is_flag=True, help="Mount each pin read-only (FUSE) instead of downloading."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per dataset.")
@_lock_option
@context_option
def pull_cmd(
    names: tuple[str, ...], path: str | None, mount: bool, as_json: bool, lock_file: str | None
) -> None:
    """Make each pinned path equal to its pinned bundle (all pins without NAME), then verify it.

    A new or empty directory is downloaded; a previous pull is updated, moving only what
    differs; one that already matches moves nothing. Exit 2 if a pinned bundle is not in the
    store, 4 if stored bytes are bad. --mount mounts instead (unmount: fusermount3 -u DIR).

    \b
    Example:
      datamon pull
      datamon pull mnist --path /scratch/mnist
      datamon pull --mount && ls data/mnist && fusermount3 -u data/mnist
    """
    lf = _load(lock_file)
    pool = _contexts()
    dests = _destination(lf, names, path)
    if mount:
        _mount_all(lf, pool, dests)
        return
    from datamon.api.pull import pull

    total = 0
    for name, dest in dests.items():
        pin = lf.get(name)
        r = pull(pool.get(pin.context), pin, dest)
        total += r.bytes
        if as_json:
            emit([r.as_dict()], as_json=True, fmt=None, text=str)
        what = {
            "none": "up to date",
            "download": "downloaded",
            "update": "updated",
        }[r.action]
        stderr(
            f"{name}: {what} bundle {pin.bundle[:12]} at {dest}: {r.files} files, "
            f"{human_size(r.bytes)} transferred, verified ({r.check.files} files) in {r.seconds:.1f}s"
        )
    if len(dests) > 1:
        stderr(f"pulled {len(dests)} datasets: {human_size(total)} transferred")


def _mount_all(lf: LockFile, pool: Contexts, dests: dict[str, str]) -> None:
    import sys

    from datamon import config
    from datamon.api.pull import check_bundle
    from datamon.fuse.mount import check_mountpoint, load_fuse, spawn

    load_fuse()
    for name, dest in dests.items():
        pin = lf.get(name)
        check_bundle(pool.get(pin.context), pin)
        os.makedirs(dest, exist_ok=True)
        mnt = check_mountpoint(dest)
        ctx_name = pin.context or pool.default
        argv = [sys.executable, "-m", "datamon.cli", *(["--context", ctx_name] if ctx_name else [])]
        argv += ["bundle", "mount", "--repo", pin.repo, "--bundle", pin.bundle, "--mount", mnt]
        log = config.home() / "mounts" / f"pull-{name}-{os.getpid()}.log"
        pid = spawn(argv, mnt, log)
        stderr(f"{name}: mounted bundle {pin.bundle[:12]} read-only at {mnt} (pid {pid})")
        stderr(f"{name}: unmount with `fusermount3 -u {mnt}`")


def register(cli: click.Group) -> None:
    cli.add_command(lock_group)
    cli.add_command(pull_cmd)
