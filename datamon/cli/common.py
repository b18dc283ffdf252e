"""What every command shares: the context option, opening the context, error handling."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from datamon.api.context import Context


class Root(click.Group):
    """Keeps commands in the order they were added in ``--help``."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


def context_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--context NAME`` on a subcommand (same as the global option)."""

    def store(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value:
            ctx.ensure_object(dict)
            ctx.find_root().ensure_object(dict)
            ctx.find_root().obj["context_name"] = value

    return click.option(
        "--context", metavar="NAME", expose_value=False, callback=store, is_eager=True, help="Context to use."
    )(f)


def open_context() -> Context:
    """The context for this invocation (opened once, closed when the command ends)."""
    ctx = click.get_current_context()
    root = ctx.find_root()
    root.ensure_object(dict)
    obj = root.obj
    if obj.get("dm") is None:
        from datamon.api.context import connect

        obj["dm"] = connect(obj.get("context_name"))
        _log_context(obj["dm"])
        root.call_on_close(lambda: _close_uninterrupted(obj["dm"]))
    dm: Context = obj["dm"]
    return dm


def _log_context(dm: Context) -> None:
    import logging

    log = logging.getLogger("datamon.cli")
    if log.isEnabledFor(logging.DEBUG):
        from datamon.config import redact_url

        log.debug(
            "context %s: metadata %s, blobs %s", dm.name, redact_url(dm.meta_url), redact_url(dm.blob_url)
        )


def _close_uninterrupted(dm: Context) -> None:
    """Close the stores with Ctrl-C held off: the command's work is done, and a SIGINT landing
    inside a database driver's close would print the driver's own traceback."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        dm.close()
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        dm.close()
    finally:
        signal.signal(signal.SIGINT, old)


def concurrency_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--concurrency-factor",
        "concurrency",
        type=click.IntRange(1, 256),
        default=None,
        help="Worker threads for reading, hashing, compressing and writing (default: CPU count).",
    )(f)


def batch_size_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """Datamon's ``--batch-size`` on listing commands. datamon streams listings from one query, so
    the value is accepted (scripts written for Datamon keep working) and changes nothing."""
    return click.option(
        "--batch-size",
        type=click.IntRange(1),
        default=None,
        help="Accepted for Datamon scripts; ignored (listings are streamed from one query).",
    )(f)


class Name(click.ParamType):
    """A repo or label name. ``strict``: must follow the naming rule (``datamon.names``), for names
    being created or labels being resolved; otherwise only an existing name's minimum (not empty,
    no NUL, valid UTF-8), so that names stored by older versions can still be listed and deleted."""

    def __init__(self, kind: str, *, strict: bool) -> None:
        self.kind = kind
        self.strict = strict
        self.name = kind.upper()

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from datamon.names import check_lookup, check_name

        text = str(value)
        return check_name(self.kind, text) if self.strict else check_lookup(self.kind, text)


class Text(click.ParamType):
    """Free text that is stored (a message, a description): valid UTF-8, no NUL."""

    name = "TEXT"

    def __init__(self, what: str) -> None:
        self.what = what

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from datamon.names import check_text

        return check_text(self.what, str(value))


class BundleId(click.ParamType):
    """A bundle id or prefix: checked to be hex here, so a typo never reaches a query."""

    name = "ID"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from datamon.errors import UsageError

        text = str(value).strip()
        if not text or any(c not in "0123456789abcdefABCDEF" for c in text):
            raise UsageError(
                f"{safe(repr(str(value)[:80]))} is not a bundle id",
                "bundle ids are hex (6 or more characters); see `datamon bundle list`",
            )
        return text.lower()


class Regex(click.ParamType):
    """A regular expression (``--name-filter``): compiled here, so a bad one is one line, exit 1."""

    name = "REGEX"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> str:
        import re

        from datamon.errors import UsageError

        text = str(value)
        try:
            re.compile(text)
        except (re.error, RecursionError, OverflowError, MemoryError) as e:
            raise UsageError(
                f"--name-filter {safe(repr(text[:80]))} is not a regular expression: {e}",
                "write a Python regular expression, e.g. '\\.csv$' (escape '(' as '\\(')",
            ) from None
        return text


LABEL = Name("label", strict=True)
LABEL_LOOKUP = Name("label", strict=False)
REPO = Name("repo", strict=False)
NEW_REPO = Name("repo", strict=True)
MESSAGE = Text("message")


def bundle_ref_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--label", metavar="LABEL", type=LABEL, help="Use the bundle this label points at.")(f)
    f = click.option(
        "--bundle", metavar="ID", type=BundleId(), help="Bundle id or unique prefix (6+ hex chars)."
    )(f)
    return f


def repo_option(
    required: bool = True, *, create: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--repo", metavar="REPO", type=NEW_REPO if create else REPO, required=required, help="Repo name."
    )


def safe(text: object) -> str:
    """What the terminal may see of ``text``: secrets masked, control characters escaped."""
    from datamon.cli.render import safe as escape
    from datamon.config import redact_text

    return escape(redact_text(str(text)))


def stderr(msg: str) -> None:
    """One line on stderr (names and paths in it are escaped, secrets masked)."""
    click.echo(safe(msg), err=True)


_RESUME: list[str] = []  # what to tell the user if this command is interrupted


def _interrupted() -> None:
    hint = _RESUME[-1] if _RESUME else "nothing already stored is lost; rerun the command to finish"
    stderr(f"interrupted: {hint}")


def set_resume_hint(hint: str) -> None:
    """What to tell the user if this command is interrupted (Ctrl-C)."""
    _RESUME.append(hint)


def _usage_line(e: click.ClickException) -> str:
    msg = e.format_message()
    ctx = getattr(e, "ctx", None)
    if isinstance(e, click.UsageError) and ctx is not None:
        return f"error: {msg}; see `{ctx.command_path} --help`"
    return f"error: {msg}"


def run(cli: click.Group, argv: list[str] | None) -> int:
    """Invoke ``cli`` and map errors to exit codes: 0 ok, 1 error, 2 not found, 3 conflict, 4 integrity.

    Every error a user or a store can cause is one line on stderr. Anything else is a bug: its
    traceback is printed with secrets masked, and the exit code is 1."""
    import logging
    import time

    from datamon.cli.about import setup_logging, split_loglevel
    from datamon.errors import DatamonError

    _RESUME.clear()
    t0 = time.monotonic()
    try:
        args, level = split_loglevel(list(sys.argv[1:] if argv is None else argv))
        setup_logging(level)
        rv = cli.main(args=args, prog_name="datamon", standalone_mode=False)
        logging.getLogger("datamon.cli").info("command finished in %.2fs", time.monotonic() - t0)
    except DatamonError as e:
        stderr(f"error: {e}")
        sys.exit(e.exit_code)
    except click.exceptions.Abort as e:
        if isinstance(e.__context__, KeyboardInterrupt):
            _interrupted()
            sys.exit(130)
        stderr("aborted")
        sys.exit(1)
    except click.ClickException as e:
        no_args = getattr(click.exceptions, "NoArgsIsHelpError", ())
        if isinstance(e, no_args) and getattr(e, "ctx", None) is not None:  # `datamon label`: its help
            click.echo(e.ctx.get_help())
            sys.exit(0)
        stderr(_usage_line(e))
        sys.exit(1)
    except KeyboardInterrupt:
        _interrupted()
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except OSError as e:
        line = os_error_line(e)
        if line is None:
            _bug()
        stderr(line)
        sys.exit(1)
    except RecursionError as e:  # a pathologically deep input; not worth a traceback
        stderr(f"error: input nested too deeply ({e})")
        sys.exit(1)
    except Exception:
        _bug()
    return rv if isinstance(rv, int) else 0


def _bug() -> NoReturn:
    import traceback

    from datamon.config import redact_text

    sys.stderr.write(redact_text(traceback.format_exc()))
    stderr("error: this is a bug in datamon; please report it with the traceback above")
    sys.exit(1)


_OS_HINTS: dict[int, str] = {
    errno.ENOSPC: "free some space, or choose another destination, and rerun",
    errno.EDQUOT: "free some space, or choose another destination, and rerun",
    errno.EFBIG: "the file system cannot hold a file that large; choose another destination",
    errno.EACCES: "check the permissions of that path, or choose another one",
    errno.EPERM: "check the permissions of that path, or choose another one",
    errno.EROFS: "that file system is read-only; choose another destination",
    errno.ENAMETOOLONG: (
        "the file system cannot hold that name (Linux allows 255 bytes); skip it with "
        "--name-filter, or use a file system that can"
    ),
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) and rerun",
    errno.ENFILE: "too many open files on this machine: close some programs and rerun",
}


def os_error_line(e: OSError) -> str | None:
    """One line for an error of the local file system that the user can fix (disk full,
    permissions, a name too long for the file system); None for any other ``OSError``,
    which is a bug."""
    hint = _OS_HINTS.get(e.errno or 0)
    if hint is None:
        return None
    where = f" {os.fsdecode(e.filename)!r}" if e.filename is not None else ""
    return f"error: cannot use{where}: {e.strerror or e}; {hint}"
