"""The ``datamon`` command: parses options, calls one api function, renders the result.

Errors a user can cause (``DatamonError``) become one line on stderr and the documented
exit code; anything else is a bug and keeps its traceback. Heavy modules are imported
inside commands so that ``datamon label get`` starts fast.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from datamon.cli.common import Root


@click.group(cls=Root, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--context", "context_name", metavar="NAME", envvar="DATAMON_CONTEXT", help="Context to use.")
@click.option(
    "--loglevel",
    metavar="LEVEL",
    help="debug, info, warning (default), error or none; logs go to stderr. Accepted after any command too.",
)
@click.version_option(package_name="datamon")
@click.pass_context
def cli(ctx: click.Context, context_name: str | None, loglevel: str | None) -> None:
    """Version directory trees of data as immutable bundles in repos.

    \b
    Example:
      datamon repo create --repo mnist --description "digits"
      datamon bundle upload --repo mnist --path ./data --message "first cut" --label prod
      datamon bundle download --repo mnist --label prod --destination ./restore
    """
    ctx.ensure_object(dict)
    ctx.obj.setdefault("context_name", context_name)


def _register() -> None:
    from datamon.cli import bundle, label, repo, setup

    for group in (repo.repo, bundle.bundle, label.label, setup.context, setup.config):
        cli.add_command(group)
    from datamon.cli import about, diamond, integrity, lfs, mount, pin, query, retention, run

    for mod in (integrity, mount, lfs, pin, run, retention, query, diamond, about):
        mod.register(cli)


_register()


def main(argv: list[str] | None = None) -> Any:
    from datamon.cli.common import run

    return run(cli, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
