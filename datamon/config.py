"""Configuration: ``$DATAMON_HOME/config.toml``, contexts, and who the contributor is.

This module and the CLI are the only places that read environment variables and config
files; the api receives explicit URLs. ``config.toml`` looks like::

    default_context = "default"

    [contributor]
    name = "Ada"
    email = "ada@example.com"

    [contexts.team]
    blob = "s3://bucket/datamon?region=eu-west-1"
    meta = "postgresql+psycopg://datamon@db/datamon"

The context ``default`` always exists: SQLite at ``$DATAMON_HOME/meta.db`` and a local
blob directory ``$DATAMON_HOME/blobs`` unless the config overrides it.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datamon.errors import NotFound, UsageError

DEFAULT_CONTEXT = "default"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def home() -> Path:
    return Path(os.environ.get("DATAMON_HOME") or Path.home() / ".datamon").expanduser()


@dataclass(frozen=True)
class ContextConfig:
    name: str
    blob_url: str
    meta_url: str

    def as_dict(self) -> dict[str, str]:
        """For display: any password in a URL is masked."""
        return {"name": self.name, "blob": mask_password(self.blob_url), "meta": mask_password(self.meta_url)}


def _password(url: str) -> str | None:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).password
    except ValueError:
        return None


def mask_password(url: str) -> str:
    pw = _password(url)
    return url.replace(f":{pw}@", ":***@", 1) if pw else url


@dataclass(frozen=True)
class Contributor:
    name: str
    email: str

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>" if self.email else self.name


def config_path() -> Path:
    return home() / "config.toml"


def load() -> dict[str, Any]:
    path = config_path()
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path} is not valid TOML: {e}", "fix or delete the file") from None


def save(data: dict[str, Any]) -> None:
    import tomli_w

    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(tomli_w.dumps(data).encode())
    os.replace(tmp, path)


def default_context_config() -> ContextConfig:
    h = home()
    return ContextConfig(DEFAULT_CONTEXT, (h / "blobs").as_uri(), f"sqlite:///{h / 'meta.db'}")


def list_contexts() -> list[ContextConfig]:
    data = load()
    out = {DEFAULT_CONTEXT: default_context_config()}
    for name, c in (data.get("contexts") or {}).items():
        out[name] = ContextConfig(name, c["blob"], c["meta"])
    return sorted(out.values(), key=lambda c: c.name)


def get_context(name: str | None = None) -> ContextConfig:
    """The named context (``None``: $DATAMON_CONTEXT, then the config's default), with
    ``DATAMON_BLOB_URL`` / ``DATAMON_META_URL`` overriding its URLs. Raises ``NotFound``."""
    data = load()
    name = name or os.environ.get("DATAMON_CONTEXT") or data.get("default_context") or DEFAULT_CONTEXT
    contexts = {c.name: c for c in list_contexts()}
    if name not in contexts:
        raise NotFound(
            f"context {name!r} does not exist",
            "list contexts with `datamon context list` or create it with `datamon context create`",
        )
    c = contexts[name]
    blob = os.environ.get("DATAMON_BLOB_URL") or c.blob_url
    meta = os.environ.get("DATAMON_META_URL") or c.meta_url
    return ContextConfig(name, blob, meta)


def create_context(name: str, blob_url: str, meta_url: str, *, make_default: bool = False) -> ContextConfig:
    if not _NAME.match(name):
        raise UsageError(f"invalid context name {name!r}", "use letters, digits, '.', '_' and '-'")
    for url in (blob_url, meta_url):
        if _password(url):
            raise UsageError(
                f"{mask_password(url)} contains a password, and datamon never stores credentials",
                "leave it out of the URL and use the driver's own files or environment "
                "(~/.pgpass or PGPASSWORD for PostgreSQL)",
            )
    data = load()
    contexts = data.setdefault("contexts", {})
    if name == DEFAULT_CONTEXT or name in contexts:
        from datamon.errors import Conflict

        raise Conflict(f"context {name!r} already exists", "choose another name")
    contexts[name] = {"blob": blob_url, "meta": meta_url}
    if make_default:
        data["default_context"] = name
    save(data)
    return ContextConfig(name, blob_url, meta_url)


SETTABLE = {
    "contributor.name",
    "contributor.email",
    "default_context",
    "cache.max_bytes",
    "upload.concurrency",
    "upload.compression_level",
}


def set_value(key: str, value: str) -> None:
    """Set one config key (``datamon config set``); raises ``UsageError`` for unknown keys."""
    if key not in SETTABLE:
        raise UsageError(f"unknown config key {key!r}", f"settable keys: {', '.join(sorted(SETTABLE))}")
    data = load()
    section, _, leaf = key.rpartition(".")
    target = data.setdefault(section, {}) if section else data
    target[leaf] = int(value) if value.isdigit() and section in ("cache", "upload") else value
    save(data)


def get_value(key: str, default: Any = None) -> Any:
    data: Any = load()
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return default
        data = data[part]
    return data


def _git_config(key: str) -> str:
    try:
        out = subprocess.run(["git", "config", "--get", key], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def contributor() -> Contributor:
    """From the config, else ``git config user.name/user.email``, else the login name."""
    data = load().get("contributor") or {}
    name = data.get("name") or _git_config("user.name")
    email = data.get("email") or _git_config("user.email")
    if not name:
        import getpass

        try:
            name = getpass.getuser()
        except Exception:
            name = "unknown"
    return Contributor(name, email)
