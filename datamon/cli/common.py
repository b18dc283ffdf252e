"""What every command shares: the context option, opening the context, error handling."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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
        root.call_on_close(obj["dm"].close)
    dm: Context = obj["dm"]
    return dm


def concurrency_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--concurrency-factor",
        "concurrency",
        type=click.IntRange(1, 256),
        default=None,
        help="Worker threads for reading, hashing, compressing and writing (default: CPU count).",
    )(f)


def bundle_ref_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--label", metavar="LABEL", help="Use the bundle this label points at.")(f)
    f = click.option("--bundle", metavar="ID", help="Bundle id or unique prefix (6+ hex chars).")(f)
    return f


def repo_option(required: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--repo", metavar="REPO", required=required, help="Repo name.")


def stderr(msg: str) -> None:
    click.echo(msg, err=True)


def run(cli: click.Group, argv: list[str] | None) -> int:
    """Invoke ``cli`` and map errors to exit codes: 0 ok, 1 error, 2 not found, 3 conflict, 4 integrity."""
    from datamon.errors import DatamonError

    try:
        rv = cli.main(args=argv, prog_name="datamon", standalone_mode=False)
    except DatamonError as e:
        stderr(f"error: {e}")
        sys.exit(e.exit_code)
    except click.exceptions.Abort as e:
        if isinstance(e.__context__, KeyboardInterrupt):
            stderr("interrupted: nothing already stored is lost; rerun the command to finish")
            sys.exit(130)
        stderr("aborted")
        sys.exit(1)
    except click.ClickException as e:
        e.show()
        sys.exit(1)
    except KeyboardInterrupt:
        stderr("interrupted: nothing already stored is lost; rerun the command to finish")
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    return rv if isinstance(rv, int) else 0
