"""``datamon.lock``: bundles pinned like dependencies, in a TOML file committed to git.

::

    # datamon.lock: bundles pinned by `datamon lock add|update|remove`. Commit this file.
    version = 1

    [datasets.mnist]
    bundle = "3fa2…(64 hex)"
    files = 70000
    label = "prod"
    path = "data/mnist"
    repo = "mnist"
    size = 55123456
    tree = "9be0…(64 hex)"

One table per dataset name under ``datasets``, tables and keys sorted, one key per line, so
a moved pin is a two-line diff in code review. ``label`` (the label the pin was taken from)
and ``context`` (the context name, when it is not the default) are optional.

A lock file is input from whoever can commit to the repo: ``load`` validates every field
(names by the naming rule, ids and keys as 64 hex characters, counts as non-negative
integers, unknown keys refused) and ``LockFile.destination`` only accepts a relative path
that stays inside the lock's directory after symlinks are resolved and has no ``.git``
component. Absolute destinations exist only per invocation (``pull --path``), never in the
file. Errors are ``UsageError`` naming the file and the dataset.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from datamon.errors import NotFound, UsageError

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.meta.records import BundleRecord

LOCK_NAME = "datamon.lock"
LOCK_VERSION = 1
HEADER = "# datamon.lock: bundles pinned by `datamon lock add|update|remove`. Commit this file.\n"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_REQUIRED = ("bundle", "files", "path", "repo", "size", "tree")
_OPTIONAL = ("context", "label")


@dataclass(frozen=True)
class Pin:
    """One dataset of the lock: a bundle of a repo, and where it is pulled to."""

    name: str
    repo: str
    bundle: str  # full id
    tree: str  # root tree key, hex: what `lock verify` checks against without the store
    files: int
    size: int
    path: str  # relative to the lock's directory, '/'-separated
    label: str | None = None
    context: str | None = None

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {
            "bundle": self.bundle,
            "files": self.files,
            "path": self.path,
            "repo": self.repo,
            "size": self.size,
            "tree": self.tree,
        }
        if self.label is not None:
            d["label"] = self.label
        if self.context is not None:
            d["context"] = self.context
        return dict(sorted(d.items()))


@dataclass
class LockFile:
    path: Path  # of the lock file itself (absolute)
    pins: dict[str, Pin] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.path.parent

    def get(self, name: str) -> Pin:
        try:
            return self.pins[name]
        except KeyError:
            raise NotFound(
                f"no dataset {name!r} in {self.path}",
                f"add it with `datamon lock add {name} --repo REPO --label LABEL --path DIR`",
            ) from None

    def select(self, names: Iterable[str]) -> list[Pin]:
        """The pins named (all of them, sorted by name, when none are)."""
        wanted = list(names)
        if not wanted:
            return [self.pins[n] for n in sorted(self.pins)]
        return [self.get(n) for n in wanted]

    def destination(self, pin: Pin) -> Path:
        """The absolute directory ``pin`` is pulled to; ``UsageError`` if its path escapes."""
        return Path(checked_path(self.root, pin.path, where=f"{self.path}: dataset {pin.name!r}"))

    def dumps(self) -> str:
        import tomli_w

        doc = {
            "version": LOCK_VERSION,
            "datasets": {n: self.pins[n].as_dict() for n in sorted(self.pins)},
        }
        return HEADER + tomli_w.dumps(doc)

    def save(self) -> None:
        """Write atomically (temporary file in the same directory, then rename)."""
        text = self.dumps()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            if tmp.exists():
                tmp.unlink()


# --- paths ---------------------------------------------------------------------------------------


def checked_path(root: Path, rel: str, *, where: str) -> str:
    """``root/rel`` as an absolute path, if ``rel`` is a relative path strictly inside ``root``
    that stays inside it when symlinks in its existing part are resolved, with no ``.git``."""
    hint = "paths in datamon.lock are relative to its directory and stay inside it"
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise UsageError(f"{where}: path {rel!r} is empty or contains NUL", hint)
    if rel.startswith("/"):
        raise UsageError(
            f"{where}: path {rel!r} is absolute",
            hint + "; give an absolute destination per run with `datamon pull NAME --path DIR`",
        )
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise UsageError(f"{where}: path {rel!r} escapes or is the lock's directory", hint)
    if any(p.lower() == ".git" for p in parts):
        raise UsageError(f"{where}: path {rel!r} goes into a .git directory", hint)
    base = os.path.realpath(root)
    dest = os.path.join(base, *parts)
    real = os.path.realpath(dest)
    if real == base or not real.startswith(base.rstrip("/") + "/"):
        raise UsageError(f"{where}: path {rel!r} leads outside {base} through a symlink", hint)
    return dest


def relative_to_lock(root: Path, given: str | os.PathLike[str]) -> str:
    """The lock-file form of a ``--path`` given on the command line (relative to the current
    directory): '/'-separated, relative to ``root``; ``UsageError`` if it is outside."""
    absolute = os.path.abspath(os.fspath(given))
    base = os.path.realpath(root)
    real = os.path.realpath(absolute)
    if real == base or not real.startswith(base.rstrip("/") + "/"):
        raise UsageError(
            f"--path {os.fspath(given)!r} is not inside {base}, the directory of the lock file",
            "pin a directory below it, or pull elsewhere per run with `datamon pull NAME --path DIR`",
        )
    rel = os.path.relpath(real, base).replace(os.sep, "/")
    checked_path(root, rel, where="--path")
    return rel


# --- finding, reading ------------------------------------------------------------------------------


def project_root(start: Path) -> Path:
    """Where a new lock file goes: the enclosing git work tree's top, else ``start``."""
    for d in (start, *start.parents):
        if (d / ".git").exists():
            return d
    return start


def find(start: str | os.PathLike[str] | None = None) -> Path | None:
    """The nearest ``datamon.lock`` in ``start`` (default: the current directory) or a parent,
    like git finds ``.git``; the walk stops at the top of a git work tree."""
    here = Path(os.path.abspath(start or os.getcwd()))
    for d in (here, *here.parents):
        p = d / LOCK_NAME
        if p.is_file():
            return p
        if (d / ".git").exists():
            return None
    return None


def locate(lock: str | os.PathLike[str] | None, *, create: bool = False) -> Path:
    """The lock file to use: ``lock`` (``--lock FILE``) or the one found by walking up. With
    ``create``, a missing one is placed at the project root. ``NotFound`` otherwise."""
    if lock is not None:
        p = Path(os.path.abspath(os.fspath(lock)))
        if p.is_dir():
            p = p / LOCK_NAME
        return p
    found = find()
    if found is not None:
        return found
    if create:
        return project_root(Path(os.getcwd())) / LOCK_NAME
    raise NotFound(
        f"no {LOCK_NAME} in {os.getcwd()} or its parents",
        "create one with `datamon lock add NAME --repo REPO --label LABEL --path DIR`, or pass --lock FILE",
    )


def load(path: Path, *, missing_ok: bool = False) -> LockFile:
    """Read and validate a lock file (see the module docstring). ``NotFound`` if it does not
    exist (an empty ``LockFile`` with ``missing_ok``), ``UsageError`` if it is malformed."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return LockFile(path)
        raise NotFound(f"lock file {path} does not exist", "create it with `datamon lock add`") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"{path} is not valid TOML: {e}", "fix it, or restore it from git") from None
    hint = "fix it, or restore it from git"
    if doc.get("version") != LOCK_VERSION:
        raise UsageError(
            f"{path}: version is {doc.get('version')!r}, this datamon reads version {LOCK_VERSION}",
            "upgrade datamon, or restore the file from git",
        )
    extra = set(doc) - {"version", "datasets"}
    if extra:
        raise UsageError(f"{path}: unknown top-level keys {sorted(extra)}", hint)
    datasets = doc.get("datasets", {})
    if not isinstance(datasets, dict):
        raise UsageError(f"{path}: datasets must be a table", hint)
    lf = LockFile(path)
    for name, table in datasets.items():
        lf.pins[name] = _pin(path, name, table)
    return lf


def _pin(path: Path, name: str, table: object) -> Pin:
    from datamon.names import check_name

    where = f"{path}: dataset {name!r}"
    hint = "fix it, or restore the file from git"
    try:
        check_name("dataset", name)
    except UsageError as e:
        raise UsageError(f"{path}: {e.message}", hint) from None
    if not isinstance(table, dict):
        raise UsageError(f"{where} must be a table", hint)
    missing = [k for k in _REQUIRED if k not in table]
    unknown = sorted(set(table) - set(_REQUIRED) - set(_OPTIONAL))
    if missing or unknown:
        raise UsageError(f"{where}: missing keys {missing}, unknown keys {unknown}", hint)
    for k in ("bundle", "tree"):
        if not isinstance(table[k], str) or not _HEX64.match(table[k]):
            raise UsageError(f"{where}: {k} must be 64 lowercase hex characters", hint)
    for k in ("files", "size"):
        v = table[k]
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << 63:
            raise UsageError(f"{where}: {k} must be a non-negative integer", hint)
    for k in ("repo", "label", "context"):
        if k in table:
            if not isinstance(table[k], str):
                raise UsageError(f"{where}: {k} must be a string", hint)
            try:
                check_name(k, table[k])
            except UsageError as e:
                raise UsageError(f"{where}: {e.message}", hint) from None
    if not isinstance(table["path"], str):
        raise UsageError(f"{where}: path must be a string", hint)
    checked_path(path.parent, table["path"], where=where)
    return Pin(
        name=name,
        repo=table["repo"],
        bundle=table["bundle"],
        tree=table["tree"],
        files=table["files"],
        size=table["size"],
        path=table["path"],
        label=table.get("label"),
        context=table.get("context"),
    )


# --- changing pins (these need the store) --------------------------------------------------------


def pin_of(name: str, b: BundleRecord, *, path: str, label: str | None, context: str | None) -> Pin:
    return Pin(
        name=name,
        repo=b.repo,
        bundle=b.id,
        tree=b.tree,
        files=b.file_count,
        size=b.total_size,
        path=path,
        label=label,
        context=context,
    )


def add(
    ctx: Context,
    lf: LockFile,
    name: str,
    *,
    repo: str,
    path: str | os.PathLike[str],
    bundle: str | None = None,
    label: str | None = None,
    context: str | None = None,
    replace_existing: bool = False,
) -> Pin:
    """Pin ``name`` to a bundle (by id or prefix, or the one ``label`` points at now) and
    save the lock. ``path`` is relative to the current directory and must be inside the
    lock's directory. ``Conflict`` if ``name`` is pinned already (unless ``replace_existing``)."""
    from datamon.api.bundles import resolve
    from datamon.api.context import check_ref
    from datamon.errors import Conflict
    from datamon.names import check_name

    check_name("dataset", name)
    if (bundle is None) == (label is None):
        raise UsageError("give exactly one of --label and --bundle")
    check_ref(repo, bundle, label)
    if name in lf.pins and not replace_existing:
        raise Conflict(
            f"dataset {name!r} is already pinned in {lf.path}",
            f"move it with `datamon lock update {name}`, or `datamon lock remove {name}` first",
        )
    rel = relative_to_lock(lf.root, path)
    for other in lf.pins.values():
        if other.name != name and _overlap(other.path, rel):
            raise UsageError(
                f"--path {rel!r} overlaps the path {other.path!r} of dataset {other.name!r}",
                "pull each dataset into a directory of its own",
            )
    b = resolve(ctx, repo, bundle=bundle, label=label)
    pin = pin_of(name, b, path=rel, label=label, context=context)
    lf.pins[name] = pin
    lf.save()
    return pin


def _overlap(a: str, b: str) -> bool:
    pa = [p for p in a.split("/") if p not in ("", ".")]
    pb = [p for p in b.split("/") if p not in ("", ".")]
    n = min(len(pa), len(pb))
    return pa[:n] == pb[:n]


def remove(lf: LockFile, name: str) -> Pin:
    """Drop ``name`` from the lock and save it (the pulled directory is left alone)."""
    pin = lf.get(name)
    del lf.pins[name]
    lf.save()
    return pin


@dataclass(frozen=True)
class PinUpdate:
    old: Pin
    new: Pin
    added: int
    changed: int
    deleted: int

    @property
    def moved(self) -> bool:
        return self.old.bundle != self.new.bundle

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.old.name,
            "label": self.old.label,
            "old": self.old.bundle,
            "new": self.new.bundle,
            "added": self.added,
            "changed": self.changed,
            "deleted": self.deleted,
        }


def plan_update(ctx: Context, pin: Pin) -> PinUpdate:
    """What re-resolving ``pin``'s label gives (a pin without a label stays); the counts are
    the files (and symlinks) added, changed and deleted between the two bundles."""
    from datamon.api.bundles import resolve
    from datamon.api.diff import diff_entries
    from datamon.cas.tree import EntryKind, TreeEntry

    if pin.label is None:
        return PinUpdate(pin, pin, 0, 0, 0)
    b = resolve(ctx, pin.repo, label=pin.label)
    if b.id == pin.bundle:
        return PinUpdate(pin, replace(pin, tree=b.tree, files=b.file_count, size=b.total_size), 0, 0, 0)

    def root(tree: str) -> TreeEntry:
        return TreeEntry("", EntryKind.DIR, 0o755, 0, 0, bytes.fromhex(tree))

    counts = {"A": 0, "U": 0, "D": 0}
    for c in diff_entries(ctx, root(pin.tree), root(b.tree)):
        if not c.path.endswith("/"):  # files and symlinks; an emptied directory is not a file
            counts[c.op] += 1
    new = pin_of(pin.name, b, path=pin.path, label=pin.label, context=pin.context)
    return PinUpdate(pin, new, counts["A"], counts["U"], counts["D"])
