"""Running a pipeline step under datamon: inputs in, outputs up, a run record either way.

``Run`` is the one implementation behind ``datamon run -- CMD`` (``execute``), ``datamon run
reproduce`` and the notebook form ``with ctx.run(inputs=..., outputs=...) as r:``. Its life:

1. ``start``: resolve every input ``REPO@REF`` to a bundle id (pinned for the whole run), make each
   input available in a scratch directory (downloaded and verified, or attached by a caller-given
   function such as a FUSE mount), and make an empty directory per output.
2. the step runs, reading ``DATAMON_INPUT_<NAME>`` and writing ``DATAMON_OUTPUT_<NAME>``
   (``DATAMON_PARAM_<KEY>`` carry the params).
3. ``finish``: on success every output directory is uploaded as a bundle of its repo whose parents
   are the input bundles (the label, if given, moves to it); whatever the status, the run record is
   written (``api/runs.py``) and the scratch directory removed.

A failed or interrupted step records a run with its status and exit code and no outputs.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from datamon.api.runs import LINK_NAME, RunRecord, encode_run, store_run
from datamon.errors import NotFound, UsageError
from datamon.meta.runs import RunLink

if TYPE_CHECKING:
    from datamon.api.context import Context

# attach(ctx, link, path): make bundle ``link`` readable at ``path``; returns a detach callable or None
Attach = Callable[["Context", RunLink, str], "Callable[[], None] | None"]


@dataclass(frozen=True)
class InputSpec:
    name: str
    repo: str
    ref: str | None  # label, id prefix, label:NAME; None = latest
    tree: str | None = None  # a recorded input (reproduce): its root tree, if its bundle row is gone


@dataclass(frozen=True)
class OutputSpec:
    name: str
    repo: str
    bundle: str | None = None  # for ``run record``: the bundle the external step wrote


def _check_link_name(name: str, what: str) -> str:
    if not LINK_NAME.match(name):
        raise UsageError(
            f"{what} name {name!r} is not a valid name",
            "use letters, digits and '_' (not first a digit, at most 64), e.g. raw or train_set",
        )
    return name


def _split_named(text: str, what: str, example: str) -> tuple[str, str]:
    name, eq, rest = text.partition("=")
    if not eq or not rest:
        raise UsageError(f"--{what} {text!r} is not NAME=REPO[@REF]", f"e.g. --{what} {example}")
    return _check_link_name(name, what), rest


def parse_input(text: str) -> InputSpec:
    """``"raw=mnist@prod"`` → InputSpec. Raises ``UsageError``."""
    from datamon.api.refs import split_ref

    name, rest = _split_named(text, "input", "raw=mnist@prod")
    repo, ref = split_ref(rest)
    return InputSpec(name, repo, ref)


def parse_output(text: str) -> OutputSpec:
    """``"feats=features"`` or ``"feats=features@<bundle id>"`` → OutputSpec."""
    from datamon.api.refs import split_ref

    name, rest = _split_named(text, "output", "feats=features")
    repo, ref = split_ref(rest)
    return OutputSpec(name, repo, ref)


def parse_params(items: Sequence[str]) -> dict[str, str]:
    """``["lr=0.1", "epochs=3"]`` → dict. Raises ``UsageError`` for a malformed or repeated key."""
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not LINK_NAME.match(key):
            raise UsageError(
                f"--param {item!r} is not KEY=VALUE", "e.g. --param lr=0.1 (KEY: letters, digits, '_')"
            )
        if key in out:
            raise UsageError(f"--param {key} is given twice", "give each param once")
        out[key] = value
    return out


def _unique(names: Sequence[str], what: str) -> None:
    seen: set[str] = set()
    for n in names:
        if n.upper() in seen:
            raise UsageError(f"two {what}s are named {n!r}", f"give each {what} its own name")
        seen.add(n.upper())


def env_var(kind: str, name: str) -> str:
    """``DATAMON_INPUT_RAW`` for input ``raw``."""
    return f"DATAMON_{kind}_{name.upper()}"


def exit_status(returncode: int) -> int:
    """A child's exit code as a shell reports it (128 + N when killed by signal N)."""
    return 128 - returncode if returncode < 0 else returncode


def _download(ctx: Context, link: RunLink, path: str, *, row_gone: bool = False) -> None:
    """Download input ``link`` into ``path``. A recorded input whose bundle was deleted (gc keeps
    the data that recorded runs read) is written from its recorded root tree; every object is
    verified on the way as in any download."""
    from datamon.api.download import download

    if not row_gone:
        download(ctx, link.repo, path, bundle=link.bundle)
        return
    from datamon.api.bundles import iter_entries
    from datamon.api.materialize import materialize
    from datamon.meta.records import BundleRecord

    shape = BundleRecord(link.bundle, link.repo, link.tree, (), "", "", "", 0, 0, 0, b"")
    os.makedirs(path, exist_ok=True)
    materialize(ctx, path, iter_entries(ctx, shape))


class Run:
    """One step's inputs, outputs and record. Use ``start``/``finish`` or ``with``."""

    def __init__(
        self,
        ctx: Context,
        inputs: Sequence[InputSpec] | Mapping[str, str],
        outputs: Sequence[OutputSpec] | Mapping[str, str],
        *,
        params: Mapping[str, str] | None = None,
        label: str | None = None,
        command: Sequence[str] | None = None,
        env_capture: Sequence[str] = (),
        attach: Attach | None = None,
        cwd: str | None = None,
        reproduces: str | None = None,
        scratch_dir: str | None = None,
    ) -> None:
        if isinstance(inputs, Mapping):
            inputs = [parse_input(f"{k}={v}") for k, v in inputs.items()]
        if isinstance(outputs, Mapping):
            outputs = [parse_output(f"{k}={v}") for k, v in outputs.items()]
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        _unique([i.name for i in self.inputs], "input")
        _unique([o.name for o in self.outputs], "output")
        self.params = dict(params or {})
        for k in self.params:
            if not LINK_NAME.match(k):
                raise UsageError(f"param {k!r} is not a valid name", "use letters, digits and '_'")
        if label is not None:
            from datamon.names import check_name

            check_name("label", label)
        self.ctx = ctx
        self.label = label
        import sys

        self.command = list(command) if command is not None else list(sys.argv)
        self.env_capture = list(env_capture)
        self.attach = attach
        self.cwd = os.path.abspath(cwd or os.getcwd())
        self.reproduces = reproduces
        self.scratch_dir = scratch_dir
        self.links: list[RunLink] = []
        self.scratch: str | None = None
        self.start_ns = 0
        self._detach: list[Callable[[], None]] = []
        self._gone: set[str] = set()  # inputs whose bundle row was deleted (written from the recorded tree)
        self.record: RunRecord | None = None

    # -- paths the step uses ---------------------------------------------------------------
    def input(self, name: str) -> str:
        """The directory holding input ``name``. Raises ``UsageError`` for an unknown name."""
        if self.scratch is None or name not in {i.name for i in self.inputs}:
            raise UsageError(
                f"this run has no input {name!r}",
                f"inputs: {', '.join(i.name for i in self.inputs) or 'none'}",
            )
        return os.path.join(self.scratch, "inputs", name)

    def output(self, name: str) -> str:
        """The (initially empty) directory whose content becomes output ``name``."""
        if self.scratch is None or name not in {o.name for o in self.outputs}:
            raise UsageError(
                f"this run has no output {name!r}",
                f"outputs: {', '.join(o.name for o in self.outputs) or 'none'}",
            )
        return os.path.join(self.scratch, "outputs", name)

    def env(self) -> dict[str, str]:
        """The variables a command run by this step sees besides the caller's environment."""
        out = {env_var("INPUT", i.name): self.input(i.name) for i in self.inputs}
        out.update({env_var("OUTPUT", o.name): self.output(o.name) for o in self.outputs})
        out.update({env_var("PARAM", k): v for k, v in self.params.items()})
        return out

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> Run:
        """Resolve and make available the inputs, create the output directories. Raises what
        resolving or downloading raises (``NotFound``, ``IntegrityError``, …), before the step runs."""
        from datamon.api.refs import resolve_ref

        self.start_ns = time.time_ns()
        for o in self.outputs:
            self.ctx.meta.get_repo(o.repo)  # NotFound before anything runs
        self.links = []
        gone = self._gone = set()
        for i in self.inputs:
            try:
                b = resolve_ref(self.ctx, i.repo, i.ref)
            except NotFound:
                if i.tree is None or i.ref is None or len(i.ref) != 64:
                    raise
                self.links.append(RunLink(i.name, i.repo, i.ref, i.tree))
                gone.add(i.name)
                continue
            self.links.append(RunLink(i.name, b.repo, b.id, b.tree))
        self.scratch = tempfile.mkdtemp(prefix="datamon-run-", dir=self.scratch_dir)
        try:
            for d in ("inputs", "outputs"):
                os.mkdir(os.path.join(self.scratch, d))
            for o in self.outputs:
                os.mkdir(self.output(o.name))
            for link in self.links:
                path = self.input(link.name)
                if self.attach is None or link.name in gone:
                    _download(self.ctx, link, path, row_gone=link.name in gone)
                else:
                    detach = self.attach(self.ctx, link, path)
                    if detach is not None:
                        self._detach.append(detach)
        except BaseException:
            self._cleanup()
            raise
        return self

    def finish(self, status: str, exit_code: int | None) -> RunRecord:
        """Upload the outputs (only if ``status`` is ``succeeded``), write the run record, remove
        the scratch directory. Returns the record. An upload that fails records a failed run and
        re-raises."""
        try:
            outputs: list[RunLink] = []
            if status == "succeeded":
                try:
                    outputs = self._upload_outputs()
                except BaseException:
                    self._record("failed", exit_code, [])
                    raise
            return self._record(status, exit_code, outputs)
        finally:
            self._cleanup()

    def _upload_outputs(self) -> list[RunLink]:
        from datamon.api.upload import upload

        self._detach_all()  # inputs first: a mount must not outlive the step
        # inputs whose bundle was deleted (a reproduction) are in the run record, not parents
        parents = list(dict.fromkeys(k.bundle for k in self.links if k.name not in self._gone))
        out = []
        what = shlex.join(self.command)
        for o in self.outputs:
            msg = f"output {o.name} of datamon run: {what[:200]}"
            r = upload(self.ctx, o.repo, self.output(o.name), message=msg, label=self.label, parents=parents)
            out.append(RunLink(o.name, o.repo, r.bundle.id, r.bundle.tree))
        return out

    def _record(self, status: str, exit_code: int | None, outputs: Sequence[RunLink]) -> RunRecord:
        from datamon.api.runenv import captured_env, git_state, host, python_env

        who = self.ctx.contributor
        rec = encode_run(
            status=status,
            exit_code=exit_code,
            inputs=self.links,
            outputs=outputs,
            command=self.command,
            params=self.params,
            cwd=self.cwd,
            git=git_state(self.cwd),
            python=python_env(self.cwd),
            env=captured_env(self.env_capture),
            host=host(),
            contributor_name=who.name,
            contributor_email=who.email,
            start_ns=self.start_ns,
            end_ns=time.time_ns(),
            external=False,
            reproduces=self.reproduces,
        )
        store_run(self.ctx, rec)
        self.record = rec
        return rec

    def _detach_all(self) -> None:
        while self._detach:
            try:
                self._detach.pop()()
            except Exception:  # cleanup must go on; a mount logs its own errors
                pass

    def _cleanup(self) -> None:
        self._detach_all()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None

    def __enter__(self) -> Run:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            self.finish("succeeded", 0)
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("interrupted", None)
        else:
            self.finish("failed", None)


def record_external(
    ctx: Context,
    inputs: Sequence[InputSpec],
    outputs: Sequence[OutputSpec],
    command: Sequence[str],
    *,
    params: Mapping[str, str] | None = None,
    exit_code: int = 0,
    env_capture: Sequence[str] = (),
    cwd: str | None = None,
) -> RunRecord:
    """Record a run that something else executed (an orchestrator's step). Every input and
    output must name an existing bundle (outputs by id: ``NAME=REPO@BUNDLE``). A non-zero
    ``exit_code`` records a failed run, which may not have outputs. Idempotent per content."""
    from datamon.api.refs import resolve_ref
    from datamon.api.runenv import captured_env, git_state, host, python_env

    _unique([i.name for i in inputs], "input")
    _unique([o.name for o in outputs], "output")
    if exit_code != 0 and outputs:
        raise UsageError("a failed run has no outputs", "drop --output, or record the run with --exit-code 0")
    if not command:
        raise UsageError("the command is empty", 'pass --command "the command line the step ran"')
    links = []
    for i in inputs:
        b = resolve_ref(ctx, i.repo, i.ref)
        links.append(RunLink(i.name, b.repo, b.id, b.tree))
    outs = []
    for o in outputs:
        if o.bundle is None:
            raise UsageError(f"output {o.name} names no bundle", f"give --output {o.name}={o.repo}@BUNDLE_ID")
        b = resolve_ref(ctx, o.repo, o.bundle)
        outs.append(RunLink(o.name, b.repo, b.id, b.tree))
    where = os.path.abspath(cwd or os.getcwd())
    now = time.time_ns()
    who = ctx.contributor
    rec = encode_run(
        status="succeeded" if exit_code == 0 else "failed",
        exit_code=exit_code,
        inputs=links,
        outputs=outs,
        command=list(command),
        params=dict(params or {}),
        cwd=where,
        git=git_state(where),
        python=python_env(where),
        env=captured_env(env_capture),
        host=host(),
        contributor_name=who.name,
        contributor_email=who.email,
        start_ns=now,
        end_ns=now,
        external=True,
    )
    store_run(ctx, rec)
    return rec


def execute(
    run: Run, *, stdin: int | None = None, extra_env: Mapping[str, str] | None = None
) -> tuple[RunRecord, int]:
    """Start ``run``, run its command with the inputs' and outputs' variables, finish it; returns
    the record and the command's exit status. Ctrl-C is passed to the command, the run recorded as
    interrupted, and ``KeyboardInterrupt`` re-raised."""
    if not run.command:
        raise UsageError("no command to run", "give it after --, e.g. datamon run ... -- python step.py")
    run.start()
    try:
        env = {**os.environ, **(extra_env or {}), **run.env()}
        proc = subprocess.Popen(run.command, env=env, cwd=run.cwd, stdin=stdin)
    except OSError as e:
        run.finish("failed", 127)
        raise UsageError(
            f"cannot run {run.command[0]!r}: {e.strerror or e}", "check the command and PATH"
        ) from None
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        _stop(proc)
        run.finish("interrupted", exit_status(proc.returncode) if proc.returncode is not None else None)
        raise
    status = exit_status(code)
    return run.finish("succeeded" if status == 0 else "failed", status), status


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Pass Ctrl-C on (a terminal sends it to the whole group; a signal to datamon alone does
    not), then insist."""
    for sig, wait in ((signal.SIGINT, 10.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        try:
            proc.send_signal(sig)
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        except KeyboardInterrupt:
            continue
