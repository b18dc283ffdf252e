"""``datamon context create|list|get`` and ``datamon config set``."""

from __future__ import annotations

import click

from datamon.cli.common import stderr
from datamon.cli.render import emit, output_options


def _text(r: dict[str, object]) -> str:
    mark = "*" if r.get("default") else " "
    return f"{mark} {r['name']}\tblob={r['blob']}\tmeta={r['meta']}"


def _rows(contexts: list[object], default: str) -> list[dict[str, object]]:
    return [{**c.as_dict(), "default": c.name == default} for c in contexts]  # type: ignore[attr-defined]


@click.group()
def context() -> None:
    """Named pairs of stores: a blob URL and a metadata database URL."""


@context.command("create")
@click.argument("name", required=False)
@click.option("--context", "name_opt", metavar="NAME", help="Context name (or give it as an argument).")
@click.option(
    "--blob", required=True, help="Blob store URL: file:///…, s3://bucket/prefix, gs://bucket/prefix."
)
@click.option("--meta", required=True, help="Metadata URL: sqlite:///…, postgresql+psycopg://user@host/db.")
@click.option("--default", "make_default", is_flag=True, help="Make it the default context.")
def context_create(name: str | None, name_opt: str | None, blob: str, meta: str, make_default: bool) -> None:
    """Create a context.

    \b
    Example:
      datamon context create team --blob s3://ml-data/datamon --meta postgresql+psycopg://dm@db/datamon
    """
    from datamon import config

    name = name or name_opt
    if not name:
        raise click.UsageError("give the context a name")
    config.create_context(name, blob, meta, make_default=make_default)
    stderr(f"created context {name}")


@context.command("list")
@output_options
def context_list(as_json: bool, fmt: str | None) -> None:
    """List contexts (* marks the default).

    \b
    Example:
      datamon context list --format '{name}'
    """
    from datamon import config

    default = config.get_context().name
    emit(_rows(config.list_contexts(), default), as_json=as_json, fmt=fmt, text=_text)  # type: ignore[arg-type]


@context.command("get")
@click.argument("name", required=False)
@output_options
def context_get(name: str | None, as_json: bool, fmt: str | None) -> None:
    """Show a context (the current one by default), with environment overrides applied.

    \b
    Example:
      datamon context get team --json
    """
    from datamon import config

    c = config.get_context(name)
    emit(_rows([c], config.get_context().name), as_json=as_json, fmt=fmt, text=_text)


@click.group()
def config() -> None:
    """Settings in $DATAMON_HOME/config.toml."""


@config.command("set")
@click.argument("key")
@click.argument("value")
def config_set(key: str, value: str) -> None:
    """Set a config value (contributor.name, contributor.email, default_context, cache.max_bytes, …).

    \b
    Example:
      datamon config set contributor.email ada@example.com
    """
    from datamon import config as cfg

    cfg.set_value(key, value)
    stderr(f"set {key}")
