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

import contextlib
import os
import re
import subprocess
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote_plus

from datamon.errors import NotFound, UsageError

DEFAULT_CONTEXT = "default"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def home() -> Path:
    """``$DATAMON_HOME`` (default ``~/.datamon``); not created here (see ``ensure_home``)."""
    return Path(os.environ.get("DATAMON_HOME") or Path.home() / ".datamon").expanduser()


HOME_MODE: Final = 0o700
CONFIG_MODE: Final = 0o600


def ensure_home() -> Path:
    """``home()``, created private (0700, whatever the umask) if it does not exist yet.

    Raises ``UsageError`` if it exists but is not a directory, or cannot be created.
    """
    h = home()
    if h.is_dir():
        return h
    if h.exists() or h.is_symlink():
        raise UsageError(
            f"DATAMON_HOME {h} is not a directory",
            "point DATAMON_HOME at a directory (or unset it to use ~/.datamon)",
        )
    try:
        _makedirs_private(h)
    except OSError as e:
        raise UsageError(
            f"cannot create DATAMON_HOME {h}: {e.strerror or e}",
            "point DATAMON_HOME at a writable directory (or unset it to use ~/.datamon)",
        ) from None
    return h


def _makedirs_private(path: Path) -> None:
    """``mkdir -p`` where every directory created gets mode 0700 (``os.makedirs`` gives the
    intermediate ones ``0777 & ~umask``)."""
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, HOME_MODE)
        except FileExistsError:
            continue
        os.chmod(d, HOME_MODE)  # mkdir's mode is filtered by the umask; make it exact


@dataclass(frozen=True)
class ContextConfig:
    name: str
    blob_url: str
    meta_url: str

    def as_dict(self) -> dict[str, str]:
        """For display: secrets in the URLs are masked (``redact_url``)."""
        return {"name": self.name, "blob": redact_url(self.blob_url), "meta": redact_url(self.meta_url)}


# --- secrets in URLs ----------------------------------------------------------------------------

# Query parameter names (lowercased, percent-decoded) whose values are secrets: passwords, tokens,
# signatures, keys (AWS X-Amz-*, GCS X-Goog-*, Azure SAS ``sig``/``sas``, OAuth ``code``...).
_SECRET_PARAM = re.compile(
    r"pass|pwd|token|secret|key|sig|credential|auth|session|sas|cookie|bearer|^code$|"
    r"^x-amz-|^x-goog-|^x-ms-|^jwt$|^otp$|^ticket$",
    re.IGNORECASE,
)
# Values of such parameters that are not secrets (gcsfs' token modes).
_PUBLIC_VALUES: Final = frozenset({"anon", "google_default", "cloud", "browser", "cache"})
MASK: Final = "***"


# Parameters whose names look secret but that name files or modes (libpq's ``sslkey``, ``passfile``).
_PUBLIC_PARAMS: Final = frozenset({"sslkey", "passfile", "target_session_attrs"})


def _secret_param(key: str, value: str) -> bool:
    if key.lower() in _PUBLIC_PARAMS:
        return False
    return bool(_SECRET_PARAM.search(key)) and value.lower() not in _PUBLIC_VALUES


def _split_userinfo(netloc: str) -> tuple[str | None, str | None, str]:
    """(user, password, host) of a netloc; ``None`` for parts that are absent."""
    if "@" not in netloc:
        return None, None, netloc
    info, host = netloc.rsplit("@", 1)
    user, sep, password = info.partition(":")
    return user, (password if sep else None), host


def _redact_query(query: str) -> str:
    out = []
    for part in re.split(r"([&;])", query):
        if part in ("&", ";") or not part:
            out.append(part)
            continue
        raw_key, sep, raw_value = part.partition("=")
        key, value = unquote_plus(raw_key), unquote_plus(raw_value)
        if sep and _secret_param(key, value):
            out.append(f"{raw_key}={MASK}")
        elif sep and "://" in value:
            out.append(f"{raw_key}={_redact(value, nested=True)}")
        else:
            out.append(part)
    return "".join(out)


def _redact(url: str, *, nested: bool) -> str:
    base, qmark, rest = url.partition("?")
    query, hash_, fragment = rest.partition("#")
    if not qmark:
        base, hash_, fragment = url.partition("#")
    scheme, sep, after = base.partition("://")
    if sep:
        netloc, slash, path = after.partition("/")
        user, password, host = _split_userinfo(netloc)
        if user is not None and (nested or password is not None):
            netloc = f"{MASK}@{host}" if nested else f"{user}:{MASK}@{host}"
        base = f"{scheme}://{netloc}{slash}{path}"
    out = base + (qmark + _redact_query(query) if qmark else "")
    if hash_:
        out += "#" + (MASK if fragment else "")
    return out


def redact_url(url: str) -> str:
    """``url`` fit for messages, logs and listings: every secret replaced by ``***``. Never raises.

    Masked: the password of the userinfo (``user:***@host``; a URL nested in a query parameter,
    such as an S3 ``endpoint_url``, loses its whole userinfo), the value of every query parameter
    whose name looks secret (password, token, secret, key, sig/signature, credential(s), session,
    sas, auth, ``X-Amz-*``, ``X-Goog-*`` ..., except gcsfs token modes such as ``token=anon``), and
    any fragment. The URL is never parsed strictly, so a malformed URL is masked too.
    """
    try:
        return _redact(str(url), nested=False)
    except Exception:  # pragma: no cover - _redact only slices strings
        return MASK


_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")


def redact_text(text: str) -> str:
    """``text`` (an error message, a traceback, a log line) with every URL in it passed through
    ``redact_url``, and ``password=``/``token=``-style assignments outside URLs masked too."""
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
    return _ASSIGNMENT.sub(_mask_assignment, text)


def _mask_assignment(m: re.Match[str]) -> str:
    return m.group(1) + MASK if _secret_param(m.group(2), m.group(3)) else m.group(0)


_ASSIGNMENT = re.compile(r"((?<![\w/])([A-Za-z][\w-]*)=)([^\s&;'\"]+)")


def url_secrets(url: str) -> list[str]:
    """What in ``url`` is a secret (``"a password"``, ``"query parameter 'token'"``), for refusing it."""
    found: list[str] = []
    base, _, rest = url.partition("?")
    query = rest.partition("#")[0]
    _scheme, sep, after = base.partition("://")
    if sep and _split_userinfo(after.partition("/")[0])[1]:
        found.append("a password")
    for part in re.split(r"[&;]", query):
        raw_key, eq, raw_value = part.partition("=")
        key, value = unquote_plus(raw_key), unquote_plus(raw_value)
        if eq and _secret_param(key, value):
            found.append(f"query parameter {key!r}")
        elif eq and "://" in value and _split_userinfo(value.partition("://")[2].partition("/")[0])[0]:
            found.append(f"credentials in query parameter {key!r}")
    return found


def mask_password(url: str) -> str:
    """Kept for callers of older versions: ``redact_url``."""
    return redact_url(url)


@dataclass(frozen=True)
class Contributor:
    name: str
    email: str

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>" if self.email else self.name


def config_path() -> Path:
    return home() / "config.toml"


def _fix_hint(path: Path) -> str:
    return f"fix it with `datamon config set ...` or by editing {path}"


def load() -> dict[str, Any]:
    path = config_path()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except NotADirectoryError:
        raise UsageError(
            f"DATAMON_HOME {home()} is not a directory",
            "point DATAMON_HOME at a directory (or unset it to use ~/.datamon)",
        ) from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory, not a config file", "remove it") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path} is not valid TOML: {e}", "fix or delete the file") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not valid UTF-8 TOML", "fix or delete the file") from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}", "check its permissions") from None
    return data


def save(data: dict[str, Any]) -> None:
    """Write ``config.toml`` atomically, mode 0600 (it may name private hosts), in a 0700 home."""
    import tomli_w

    ensure_home()
    path = config_path()
    tmp = path.with_name(f".config.toml.{os.getpid()}.{time.monotonic_ns()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), CONFIG_MODE)
    try:
        os.fchmod(fd, CONFIG_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(tomli_w.dumps(data).encode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def default_context_config() -> ContextConfig:
    h = home()
    return ContextConfig(DEFAULT_CONTEXT, (h / "blobs").as_uri(), f"sqlite:///{h / 'meta.db'}")


def _table(data: Any, key: str) -> dict[str, Any]:
    """``data[key]`` as a table (empty if absent); ``UsageError`` naming the key if it is not one."""
    value = data.get(key) if isinstance(data, dict) else None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f"{config_path()}: {key!r} must be a table, not {value!r}", _fix_hint(config_path()))
    return value


def _context_of(name: str, c: Any) -> ContextConfig:
    path = config_path()
    if not isinstance(c, dict):
        raise UsageError(f"{path}: context {name!r} is not a table", f"edit {path}")
    for key in ("blob", "meta"):
        if not isinstance(c.get(key), str) or not c[key]:
            raise UsageError(
                f"{path}: context {name!r} has no {key!r} URL",
                f'add `{key} = "URL"` under [contexts.{name}] in {path}, or remove the context',
            )
    return ContextConfig(name, c["blob"], c["meta"])


def list_contexts() -> list[ContextConfig]:
    data = load()
    out = {DEFAULT_CONTEXT: default_context_config()}
    for name, c in _table(data, "contexts").items():
        out[name] = _context_of(name, c)
    return sorted(out.values(), key=lambda c: c.name)


def get_context(name: str | None = None) -> ContextConfig:
    """The named context (``None``: $DATAMON_CONTEXT, then the config's default), with
    ``DATAMON_BLOB_URL`` / ``DATAMON_META_URL`` overriding its URLs. Raises ``NotFound``."""
    data = load()
    default = data.get("default_context")
    if default is not None and not isinstance(default, str):
        raise UsageError(f"{config_path()}: default_context must be a string", _fix_hint(config_path()))
    name = name or os.environ.get("DATAMON_CONTEXT") or default or DEFAULT_CONTEXT
    contexts = _table(data, "contexts")
    if name == DEFAULT_CONTEXT and name not in contexts:
        c = default_context_config()
    elif name in contexts:
        c = _context_of(name, contexts[name])
    else:
        raise NotFound(
            f"context {name!r} does not exist",
            "list contexts with `datamon context list` or create it with `datamon context create`",
        )
    blob = os.environ.get("DATAMON_BLOB_URL") or c.blob_url
    meta = os.environ.get("DATAMON_META_URL") or c.meta_url
    return ContextConfig(name, blob, meta)


def create_context(name: str, blob_url: str, meta_url: str, *, make_default: bool = False) -> ContextConfig:
    if not _NAME.match(name):
        raise UsageError(f"invalid context name {name!r}", "use letters, digits, '.', '_' and '-'")
    for what, url in (("blob", blob_url), ("metadata", meta_url)):
        if not url or any(not c.isprintable() for c in url):
            raise UsageError(f"the {what} URL {url!r} is empty or has control characters", "give a plain URL")
        secrets = url_secrets(url)
        if secrets:
            raise UsageError(
                f"the {what} URL {redact_url(url)} contains {', '.join(secrets)}, "
                "and datamon never stores credentials",
                "leave it out of the URL and use the driver's own files or environment "
                "(~/.pgpass or PGPASSWORD for PostgreSQL, AWS_* or GOOGLE_APPLICATION_CREDENTIALS for blobs)",
            )
    data = load()
    contexts = data.setdefault("contexts", {})
    if not isinstance(contexts, dict):
        raise UsageError(f"{config_path()}: 'contexts' must be a table", f"edit {config_path()}")
    if name == DEFAULT_CONTEXT or name in contexts:
        from datamon.errors import Conflict

        raise Conflict(f"context {name!r} already exists", "choose another name")
    contexts[name] = {"blob": blob_url, "meta": meta_url}
    if make_default:
        data["default_context"] = name
    save(data)
    return ContextConfig(name, blob_url, meta_url)


# --- settable keys ------------------------------------------------------------------------------

SETTABLE = {
    "contributor.name",
    "contributor.email",
    "default_context",
    "cache.max_bytes",
    "upload.concurrency",
    "upload.compression_level",
}
MIN_LEVEL: Final = 1
MAX_LEVEL: Final = 22  # zstandard's highest level
MAX_CONCURRENCY: Final = 256
MAX_CACHE_BYTES: Final = 1 << 60
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"1G"``, ``"512M"``, ``"1.5GiB"``, ``"4096"`` → bytes (powers of 1024). Raises ``ValueError``."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(text)
    n = float(m.group(1)) * (1 << (10 * " KMGTP".index(m.group(2).upper() or " ")))
    if n != n or n > MAX_CACHE_BYTES:
        raise ValueError(text)
    return int(n)


def _int_in(key: str, value: object, lo: int, hi: int, example: str) -> int:
    n: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,20}\s*", value):
        n = int(value)
    if n is None or not lo <= n <= hi:
        raise UsageError(
            f"{key} = {value!r} is not a whole number from {lo} to {hi}",
            f"set it with `datamon config set {key} {example}`",
        )
    return n


def _size_value(key: str, value: object) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        n = value if isinstance(value, int) else parse_size(str(value))
        if not 1 <= n <= MAX_CACHE_BYTES:
            raise ValueError(value)
        return n
    except ValueError:
        raise UsageError(
            f"{key} = {value!r} is not a size", f"set it with `datamon config set {key} 1G` (or 512M, 20G)"
        ) from None


def _text_value(key: str, value: object) -> str:
    if not isinstance(value, str) or any(not c.isprintable() for c in value) or len(value) > 1000:
        raise UsageError(
            f"{key} = {value!r} is not a single line of printable text",
            f"set it with `datamon config set {key} VALUE`",
        )
    return value


def _validate(key: str, value: object) -> object:
    """The value to store for ``key`` (parsed), or ``UsageError`` saying what is wrong."""
    if key == "cache.max_bytes":
        return _size_value(key, value)
    if key == "upload.compression_level":
        return _int_in(key, value, MIN_LEVEL, MAX_LEVEL, "3")
    if key == "upload.concurrency":
        return _int_in(key, value, 1, MAX_CONCURRENCY, "8")
    text = _text_value(key, value)
    if key == "default_context" and text != DEFAULT_CONTEXT and text not in _table(load(), "contexts"):
        raise NotFound(f"context {text!r} does not exist", "create it first with `datamon context create`")
    return text


def set_value(key: str, value: str) -> None:
    """Set one config key (``datamon config set``); raises ``UsageError`` for unknown keys and for
    values that are not valid for the key (so a stored value never breaks later commands)."""
    if key not in SETTABLE:
        raise UsageError(f"unknown config key {key!r}", f"settable keys: {', '.join(sorted(SETTABLE))}")
    parsed = _validate(key, value)
    data = load()
    section, _, leaf = key.rpartition(".")
    if section:
        target = _table(data, section)
        data[section] = target
    else:
        target = data
    target[leaf] = parsed
    save(data)


def get_value(key: str, default: Any = None) -> Any:
    data: Any = load()
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(data, dict):
            where = ".".join(parts[:i])
            raise UsageError(
                f"{config_path()}: {where!r} must be a table, not {data!r}", _fix_hint(config_path())
            )
        if part not in data:
            return default
        data = data[part]
    return data


def cache_bytes(default: int = 1 << 30) -> int:
    """``cache.max_bytes`` from the config, validated (``UsageError`` naming the key)."""
    value = get_value("cache.max_bytes")
    return default if value is None else _size_value("cache.max_bytes", value)


def compression_level() -> int | None:
    """``upload.compression_level`` from the config, validated; ``None`` if unset."""
    value = get_value("upload.compression_level")
    return None if value is None else _int_in("upload.compression_level", value, MIN_LEVEL, MAX_LEVEL, "3")


def _git_config(key: str) -> str:
    try:
        out = subprocess.run(["git", "config", "--get", key], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def contributor() -> Contributor:
    """From the config, else ``git config user.name/user.email``, else the login name."""
    data = _table(load(), "contributor")
    name = data.get("name") or _git_config("user.name")
    email = data.get("email") or _git_config("user.email")
    name = _text_value("contributor.name", name) if name else name
    email = _text_value("contributor.email", email) if email else email
    if not name:
        import getpass

        try:
            name = getpass.getuser()
        except Exception:
            name = "unknown"
    return Contributor(name, email)
