"""What a run record says about where a step ran: git commit, Python environment, host, variables.

Each probe is best effort and bounded in time: a machine without git, a directory outside a git
repository or a PATH without Python records ``None``, never an error.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any, Final

from datamon.errors import UsageError

_TIMEOUT: Final = 20.0

# Run by the Python found on PATH (the one the step most likely uses): its version and its installed
# distributions, one "name==version" per line, sorted, so the digest names the environment.
_PY_PROBE: Final = (
    "import sys, importlib.metadata as m\n"
    "names = sorted({f\"{(d.metadata['Name'] or '').lower()}=={d.version}\" for d in m.distributions()})\n"
    "print(sys.version.split()[0]); print(*names, sep='\\n')\n"
)


def _run(args: Sequence[str], cwd: str) -> str | None:
    try:
        p = subprocess.run(
            list(args),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError):
        return None
    return p.stdout if p.returncode == 0 else None


def git_state(cwd: str) -> dict[str, Any] | None:
    """``{"commit": hex, "dirty": bool}`` of the git work tree holding ``cwd``, or None."""
    if shutil.which("git") is None:
        return None
    head = _run(["git", "rev-parse", "--verify", "HEAD"], cwd)
    if head is None:
        return None
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd)
    return {"commit": head.strip().lower(), "dirty": bool(status and status.strip())}


def python_env(cwd: str) -> dict[str, Any] | None:
    """``{"version", "packages", "digest"}`` of the Python on PATH, or None if there is none."""
    from datamon.cas.hashing import key_of

    exe = shutil.which("python3") or shutil.which("python")
    if exe is None:
        return None
    out = _run([exe, "-I", "-c", _PY_PROBE], cwd)
    if not out:
        return None
    version, *names = out.splitlines()
    return {
        "version": version[:64],
        "packages": len(names),
        "digest": key_of("\n".join(names).encode()).hex(),
    }


def captured_env(names: Sequence[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The values of the variables ``names`` (those that are set). Raises ``UsageError`` for a
    name that cannot be a variable."""
    env = os.environ if environ is None else environ
    out = {}
    for n in names:
        if not n or "=" in n or "\x00" in n:
            raise UsageError(
                f"--env-capture {n!r} is not a variable name", "e.g. --env-capture CUDA_VISIBLE_DEVICES"
            )
        if n in env:
            out[n] = env[n]
    return out


def host() -> str:
    try:
        return socket.gethostname()
    except OSError:
        return ""
