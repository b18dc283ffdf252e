"""The git side of the LFS integration: the config keys that select the agent, and where
git-lfs keeps its files.

``install`` writes ``lfs.standalonetransferagent=datamon`` and
``lfs.customtransfer.datamon.{path,args,concurrent}``; with a standalone agent git-lfs never
contacts an LFS API server. git-lfs runs the agent as ``sh -c "<path> <args>"`` in the
working tree, so ``args`` is quoted for a shell.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from datamon.errors import UsageError

AGENT: Final = "datamon"
STANDALONE_KEY: Final = "lfs.standalonetransferagent"
SECTION: Final = f"lfs.customtransfer.{AGENT}"
REPO_KEY: Final = "datamon.repo"  # read by an agent started without --repo

Scope = Literal["local", "global"]


def _git(args: Sequence[str], cwd: str | os.PathLike[str] | None = None) -> subprocess.CompletedProcess[str]:
    git = shutil.which("git")
    if git is None:
        raise UsageError("git is not installed", "install git and git-lfs")
    return subprocess.run(
        [git, *args], cwd=cwd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
    )


def git_config_get(
    key: str, cwd: str | os.PathLike[str] | None = None, scope: Scope | None = None
) -> str | None:
    """The value of ``key`` (in ``scope``, or as git resolves it), or ``None`` if unset."""
    r = _git(["config", *([f"--{scope}"] if scope else []), "--get", key], cwd)
    return r.stdout.strip() if r.returncode == 0 else None


def lfs_storage_dir(cwd: str | os.PathLike[str] | None = None) -> Path | None:
    """git-lfs's storage directory for the repository at ``cwd`` (``.git/lfs`` unless
    ``lfs.storage`` moves it), or ``None`` outside a git repository."""
    r = _git(["rev-parse", "--git-common-dir"], cwd)
    if r.returncode != 0:
        return None
    git_dir = Path(cwd or os.getcwd(), r.stdout.strip())
    storage = git_config_get("lfs.storage", cwd)
    return (git_dir / storage if storage else git_dir / "lfs").resolve()


def lfs_tmp_dir(cwd: str | os.PathLike[str] | None = None) -> Path:
    """Where downloads are written: git-lfs's own temporary directory (``.git/lfs/tmp``), on
    the same filesystem as its object store so that git-lfs moves the file with a rename.
    Outside a git repository, the system temporary directory."""
    storage = lfs_storage_dir(cwd)
    if storage is None:
        return Path(tempfile.gettempdir())
    tmp = storage / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return tmp


def datamon_executable() -> str:
    """Absolute path of the ``datamon`` command that is running (else the one on PATH)."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "datamon":
        found = shutil.which(str(argv0)) if argv0.parent == Path() else str(argv0)
        if found and os.access(found, os.X_OK):
            return str(Path(found).absolute())
    found = shutil.which("datamon")
    if found:
        return str(Path(found).absolute())
    raise UsageError(
        "cannot find the datamon executable", "put it on PATH, or pass --path /absolute/path/to/datamon"
    )


def agent_args(repo: str | None, context: str | None) -> str:
    """The ``args`` value: ``lfs agent --repo R [--context C]``, quoted for ``sh -c``."""
    words = ["lfs", "agent"]
    if repo:
        words += ["--repo", repo]
    if context:
        words += ["--context", context]
    return " ".join(shlex.quote(w) for w in words)


@dataclass(frozen=True)
class Installed:
    scope: Scope
    settings: dict[str, str]
    where: str  # the config file git wrote to, for the message


def _scope_args(scope: Scope, cwd: str | os.PathLike[str] | None) -> list[str]:
    if scope == "local" and lfs_storage_dir(cwd) is None:
        raise UsageError(
            "not inside a git repository", "cd into the repository that uses Git LFS, or pass --global"
        )
    return [f"--{scope}"]


def install(
    repo: str,
    *,
    context: str | None = None,
    scope: Scope = "local",
    path: str | None = None,
    concurrent: bool = False,
    cwd: str | os.PathLike[str] | None = None,
) -> Installed:
    """Write the config keys that make git-lfs use ``datamon lfs agent`` for ``repo``.
    Idempotent (rewrites the same keys). Raises ``UsageError`` outside a repository (local
    scope) or if git refuses the write."""
    flag = _scope_args(scope, cwd)
    settings = {
        STANDALONE_KEY: AGENT,
        f"{SECTION}.path": path or datamon_executable(),
        f"{SECTION}.args": agent_args(repo, context),
        f"{SECTION}.concurrent": "true" if concurrent else "false",
    }
    for key, value in settings.items():
        r = _git(["config", *flag, key, value], cwd)
        if r.returncode != 0:
            raise UsageError(
                f"git config {key} failed: {r.stderr.strip()}", "check that the config is writable"
            )
    where = _git(["config", *flag, "--show-origin", "--get", STANDALONE_KEY], cwd).stdout.split("\t")[0]
    return Installed(scope, settings, where.removeprefix("file:"))


def uninstall(*, scope: Scope = "local", cwd: str | os.PathLike[str] | None = None) -> list[str]:
    """Remove what ``install`` wrote in ``scope``; returns the keys removed (none is fine).

    ``lfs.standalonetransferagent`` is only removed if it still names the datamon agent.
    """
    flag = _scope_args(scope, cwd)
    removed = []
    if git_config_get(STANDALONE_KEY, cwd, scope) == AGENT:
        _git(["config", *flag, "--unset", STANDALONE_KEY], cwd)
        removed.append(STANDALONE_KEY)
    listing = _git(["config", *flag, "--name-only", "--get-regexp", rf"^{SECTION}\."], cwd)
    keys = listing.stdout.split() if listing.returncode == 0 else []
    if keys:
        _git(["config", *flag, "--remove-section", SECTION], cwd)
        removed += keys
    return removed


def lfs_filters_installed(cwd: str | os.PathLike[str] | None = None) -> bool:
    """Whether ``git lfs install`` has set up the LFS filters git needs (any scope)."""
    return bool(git_config_get("filter.lfs.process", cwd) or git_config_get("filter.lfs.smudge", cwd))
