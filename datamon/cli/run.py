"""``datamon run`` (run a recorded step, record an external one, list, get, reproduce) and
``datamon lineage``."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from datamon.cli.common import LABEL, bundle_ref_options, context_option, open_context, repo_option, stderr
from datamon.cli.render import emit, iso, output_options

_STEP = "datamon run --input raw=mnist@prod --output clean=mnist-clean --param seed=1 -- python clean.py"


class RunGroup(click.Group):
    """``datamon run [OPTIONS] -- COMMAND`` runs a step; ``datamon run list|get|record|reproduce``
    are subcommands. Anything that is not a subcommand name is the options of a step."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["step", *args]
        return super().parse_args(ctx, args)


def _rich_run_row(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "status": r.status,
        "exit_code": r.exit_code,
        "time": iso(r.start_ns),
        "seconds": round((r.end_ns - r.start_ns) / 1e9, 3),
        "command": r.command_line,
        "inputs": " ".join(f"{k.name}={k.repo}@{k.bundle[:12]}" for k in r.inputs),
        "outputs": " ".join(f"{k.name}={k.repo}@{k.bundle[:12]}" for k in r.outputs),
        "contributor": f"{r.contributor_name} <{r.contributor_email}>",
        "external": r.external,
    }


def _run_text(row: dict[str, Any]) -> str:
    code = "" if row["exit_code"] is None else f" ({row['exit_code']})"
    return (
        f"{row['id']}\t{row['time']}\t{row['status']}{code}\t{row['command']}\t"
        f"in: {row['inputs'] or '-'}\tout: {row['outputs'] or '-'}"
    )


def _mount_attach() -> Any:
    """An ``attach`` for ``Run`` that FUSE-mounts each input read-only in a child process."""
    import subprocess

    from datamon import config
    from datamon.fuse.mount import check_mountpoint, load_fuse, spawn

    load_fuse()

    def attach(ctx: Any, link: Any, path: str) -> Any:
        os.makedirs(path, exist_ok=True)
        mnt = check_mountpoint(path)
        argv = [sys.executable, "-m", "datamon.cli", "bundle", "mount", "--repo", link.repo]
        argv += ["--bundle", link.bundle, "--mount", mnt]
        env_ctx = {"DATAMON_BLOB_URL": ctx.blob_url, "DATAMON_META_URL": ctx.meta_url}
        old = {k: os.environ.get(k) for k in env_ctx}
        os.environ.update(env_ctx)
        try:
            spawn(argv, mnt, config.home() / "mounts" / f"run-{link.name}-{os.getpid()}.log")
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

        def detach() -> None:
            subprocess.run(["fusermount3", "-u", mnt], check=False, capture_output=True)

        return detach

    return attach


def _report(rec: Any) -> None:
    for o in rec.outputs:
        stderr(f"output {o.name}: bundle {o.bundle} of {o.repo}")
    code = "" if rec.exit_code is None else f" (exit {rec.exit_code})"
    stderr(f"run {rec.id} {rec.status}{code}")


@click.group(cls=RunGroup)
def run() -> None:
    """Run a pipeline step with datamon inputs and outputs, and record it (lineage).

    \b
    datamon run [--input NAME=REPO[@REF]]... [--output NAME=REPO]... [--label L]
                [--param KEY=VALUE]... [--env-capture VAR]... [--mount] -- COMMAND [ARGS]...

    Each input (REF: a label or a bundle id prefix; none: the latest bundle) is downloaded (or
    mounted with --mount) and its directory passed in $DATAMON_INPUT_<NAME>; each output is an
    empty directory in $DATAMON_OUTPUT_<NAME>; params are in $DATAMON_PARAM_<KEY>. If the command
    exits 0, each output directory becomes a bundle of its repo with the inputs as parents (--label
    moves that label). The run is recorded whatever happens; datamon exits with the command's code.

    \b
    Example:
      datamon run --input raw=mnist@prod --output clean=mnist-clean -- python clean.py
      datamon run list --repo mnist-clean
      datamon lineage --repo mnist-clean --label latest --upstream
    """


@run.command("step", hidden=True, context_settings={"allow_interspersed_args": False})
@click.option("--input", "inputs", multiple=True, metavar="NAME=REPO[@REF]", help="An input bundle.")
@click.option("--output", "outputs", multiple=True, metavar="NAME=REPO", help="An output repo.")
@click.option("--label", type=LABEL, help="Move this label to each output bundle.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="A parameter (recorded).")
@click.option("--env-capture", "env_capture", multiple=True, metavar="VAR", help="Record this variable.")
@click.option("--mount", is_flag=True, help="FUSE-mount inputs read-only instead of downloading them.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@context_option
def run_step(
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
    label: str | None,
    params: tuple[str, ...],
    env_capture: tuple[str, ...],
    mount: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND as a recorded step.

    \b
    Example:
      datamon run --input raw=mnist@prod --output clean=mnist-clean -- python clean.py
    """
    from datamon.api.runner import Run, execute, parse_input, parse_output, parse_params
    from datamon.cli.common import set_resume_hint

    r = Run(
        open_context(),
        [parse_input(i) for i in inputs],
        [parse_output(o) for o in outputs],
        params=parse_params(params),
        label=label,
        command=list(command),
        env_capture=env_capture,
        attach=_mount_attach() if mount else None,
    )
    set_resume_hint("the run was recorded as interrupted, with no outputs; see `datamon run list`")
    rec, code = execute(r)
    _report(rec)
    sys.exit(code)


@run.command("record")
@click.option("--input", "inputs", multiple=True, metavar="NAME=REPO[@REF]", help="An input bundle.")
@click.option("--output", "outputs", multiple=True, metavar="NAME=REPO@BUNDLE", help="An output bundle.")
@click.option("--command", "command", required=True, help="The command line the step ran.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="A parameter.")
@click.option(
    "--exit-code", type=click.IntRange(-(2**31), 2**31 - 1), default=0, help="The step's exit code."
)
@click.option("--env-capture", "env_capture", multiple=True, metavar="VAR", help="Record this variable.")
@output_options
@context_option
def run_record(
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
    command: str,
    params: tuple[str, ...],
    exit_code: int,
    env_capture: tuple[str, ...],
    as_json: bool,
    fmt: str | None,
) -> None:
    """Record a step that something else ran (Airflow, Argo, a Kubernetes Job); prints the run id.

    \b
    Example:
      datamon run record --input raw=mnist@prod --output clean=mnist-clean@3fa2c1 \\
          --command "python clean.py --seed 1" --param seed=1
    """
    import shlex

    from datamon.api.runner import parse_input, parse_output, parse_params, record_external
    from datamon.errors import UsageError

    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise UsageError(
            f"--command {command!r} cannot be split into words: {e}", "quote it as a shell would"
        ) from None
    rec = record_external(
        open_context(),
        [parse_input(i) for i in inputs],
        [parse_output(o) for o in outputs],
        argv,
        params=parse_params(params),
        exit_code=exit_code,
        env_capture=env_capture,
    )
    emit([_rich_run_row(rec)], as_json=as_json, fmt=fmt or ("{id}" if not as_json else None), text=_run_text)


@run.command("list")
@repo_option(required=False)
@click.option("--limit", type=click.IntRange(1), default=None, help="At most this many runs.")
@output_options
@context_option
def run_list(repo: str | None, limit: int | None, as_json: bool, fmt: str | None) -> None:
    """List recorded runs, newest first (with --repo: runs that read or wrote that repo).

    \b
    Example:
      datamon run list --repo mnist-clean --format '{id} {status} {command}'
    """
    from datamon.api.runs import list_runs

    emit(
        (_rich_run_row(r) for r in list_runs(open_context(), repo, limit)),
        as_json=as_json,
        fmt=fmt,
        text=_run_text,
    )


@run.command("get")
@click.argument("run_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="The whole record as one JSON object.")
@context_option
def run_get(run_id: str, as_json: bool) -> None:
    """Show one run: inputs, outputs, command, params, git commit, environment.

    \b
    Example:
      datamon run get 9b1c2d
    """
    from datamon.api.runs import get_run
    from datamon.cli.render import json_line, safe

    r = get_run(open_context(), run_id)
    if as_json:
        click.echo(json_line(r.as_dict()))
        return
    lines = [
        f"run: {r.id}",
        f"status: {r.status}" + ("" if r.exit_code is None else f" (exit {r.exit_code})"),
        f"command: {r.command_line}",
        f"started: {iso(r.start_ns)}  ended: {iso(r.end_ns)}",
        f"contributor: {r.contributor_name} <{r.contributor_email}>  host: {r.host}",
        f"cwd: {r.cwd}",
    ]
    if r.git:
        lines.append(f"git: {r.git['commit']}" + (" (dirty)" if r.git["dirty"] else ""))
    if r.python:
        lines.append(
            f"python: {r.python['version']}, {r.python['packages']} packages, digest {r.python['digest']}"
        )
    lines += [f"param: {k}={v}" for k, v in sorted(r.params.items())]
    lines += [f"env: {k}={v}" for k, v in sorted(r.env.items())]
    lines += [f"input: {k.name}={k.repo}@{k.bundle}" for k in r.inputs]
    lines += [f"output: {k.name}={k.repo}@{k.bundle}" for k in r.outputs]
    if r.external:
        lines.append("external: recorded by `datamon run record`")
    if r.reproduces:
        lines.append(f"reproduces: {r.reproduces}")
    for line in lines:
        click.echo(safe(line))


@run.command("reproduce")
@click.argument("run_id", metavar="ID")
@click.option("--check", is_flag=True, help="Exit 4 if the outputs differ from the recorded ones.")
@click.option("--label", type=LABEL, help="Move this label to each new output bundle.")
@click.option("--mount", is_flag=True, help="FUSE-mount inputs read-only instead of downloading them.")
@context_option
def run_reproduce(run_id: str, check: bool, label: str | None, mount: bool) -> None:
    """Run a recorded step again on the same input bundles and params.

    With --check, compare each new output with the recorded one by content (paths, file keys,
    sizes, links, executable bits) and exit 4 naming the files that differ.

    \b
    Example:
      datamon run reproduce 9b1c2d --check
    """
    from datamon.api.reproduce import reproduce
    from datamon.errors import IntegrityError

    rep = reproduce(
        open_context(), run_id, check=check, label=label, attach=_mount_attach() if mount else None
    )
    _report(rep.new)
    if rep.exit_code != 0:
        sys.exit(rep.exit_code)
    if check:
        bad = {name: ch for name, ch in rep.differences.items() if ch}
        for name, changes in bad.items():
            for c in changes[:20]:
                stderr(f"differs: output {name}: {c.op} {c.path}")
        if bad:
            n = sum(len(c) for c in bad.values())
            raise IntegrityError(
                f"run {rep.old.id[:12]} did not reproduce: {n} file(s) differ "
                f"in output(s) {', '.join(sorted(bad))}",
                "the step is not deterministic (time, randomness, unpinned inputs?)",
            )
        stderr(f"run {rep.old.id[:12]} reproduced: every output has the same content")


@click.command("lineage")
@repo_option()
@bundle_ref_options
@click.option("--upstream", is_flag=True, help="Only what the bundle was made from.")
@click.option("--downstream", is_flag=True, help="Only what was made from the bundle.")
@click.option("--depth", type=click.IntRange(1), default=None, help="At most this many generations.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per node and per edge.")
@click.option(
    "--format", "fmt", type=click.Choice(["text", "dot"]), default="text", help="dot: Graphviz source."
)
@context_option
def lineage_cmd(
    repo: str,
    bundle: str | None,
    label: str | None,
    upstream: bool,
    downstream: bool,
    depth: int | None,
    as_json: bool,
    fmt: str,
) -> None:
    """Show the runs and bundles a bundle was made from, or that were made from it.

    \b
    Example:
      datamon lineage --repo features --label prod --upstream
      datamon lineage --repo mnist --label raw --downstream --format dot | dot -Tsvg > lineage.svg
    """
    from datamon.api.bundles import resolve
    from datamon.api.lineage import lineage, to_dot
    from datamon.cli.render import json_line

    dm = open_context()
    b = resolve(dm, repo, bundle=bundle, label=label)
    both = not upstream and not downstream
    g = lineage(dm, b, upstream=upstream or both, downstream=downstream or both, depth=depth)
    if as_json:
        for n in g.nodes.values():
            click.echo(json_line(n.as_dict()))
        for e in g.edges:
            click.echo(json_line(e.as_dict()))
    elif fmt == "dot":
        click.echo(to_dot(g), nl=False)
    else:
        from datamon.cli.lineage_text import render_text

        for line in render_text(g):
            click.echo(line)


def register(cli: click.Group) -> None:
    cli.add_command(run)
    cli.add_command(lineage_cmd)
