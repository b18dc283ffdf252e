"""Run records: what a pipeline step read, ran and wrote (docs/lineage.md).

A run record is canonical JSON (sorted keys, compact, UTF-8, like a bundle record); its id is the
BLAKE3 of those bytes. It is stored twice: as the blob ``runs/<id>`` in the blob store (so lineage
survives losing the metadata database: ``admin reindex`` rebuilds the rows from these blobs) and as
rows in the metadata database (``meta/runs.py``) for lineage walks and queries. Write order: output
bundles → run blob → run rows, so a crash leaves at worst bundles without their run, never a run
pointing at bundles that were not written.

Everything read back is hostile until checked: ``decode_run`` validates every field's type and
bound, and a record is used only if it hashes to the id it was found under.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from datamon.errors import IntegrityError, UsageError
from datamon.meta.runs import RunLink, RunRow

if TYPE_CHECKING:
    from datamon.api.context import Context

RUN_VERSION: Final = 1
MAX_RUN_BYTES: Final = 4 << 20
RUN_BLOB_PREFIX: Final = "runs/"
STATUSES: Final = ("succeeded", "failed", "interrupted")
_KEYS: Final = frozenset(
    {
        "command",
        "contributor",
        "cwd",
        "end_ns",
        "env",
        "exit_code",
        "external",
        "git",
        "host",
        "inputs",
        "outputs",
        "params",
        "python",
        "reproduces",
        "start_ns",
        "status",
        "version",
    }
)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_GIT = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
LINK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_INT64 = 1 << 63


@dataclass(frozen=True)
class RunRecord:
    """One run. ``raw`` is the canonical encoding whose BLAKE3 is ``id``."""

    id: str
    status: str  # succeeded | failed | interrupted
    exit_code: int | None
    inputs: tuple[RunLink, ...]
    outputs: tuple[RunLink, ...]
    command: tuple[str, ...]
    params: Mapping[str, str]
    cwd: str
    git: Mapping[str, Any] | None  # {"commit": hex, "dirty": bool}
    python: Mapping[str, Any] | None  # {"version": str, "packages": int, "digest": hex}
    env: Mapping[str, str]
    host: str
    contributor_name: str
    contributor_email: str
    start_ns: int
    end_ns: int
    external: bool
    reproduces: str | None
    raw: bytes = field(repr=False)

    @property
    def command_line(self) -> str:
        return shlex.join(self.command)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = json.loads(self.raw)
        return {"id": self.id, **d}


def _links(links: Sequence[RunLink]) -> list[dict[str, str]]:
    return [
        {"bundle": k.bundle, "name": k.name, "repo": k.repo, "tree": k.tree}
        for k in sorted(links, key=lambda k: k.name)
    ]


def encode_run(
    *,
    status: str,
    exit_code: int | None,
    inputs: Sequence[RunLink],
    outputs: Sequence[RunLink],
    command: Sequence[str],
    params: Mapping[str, str],
    cwd: str,
    git: Mapping[str, Any] | None,
    python: Mapping[str, Any] | None,
    env: Mapping[str, str],
    host: str,
    contributor_name: str,
    contributor_email: str,
    start_ns: int,
    end_ns: int,
    external: bool,
    reproduces: str | None = None,
) -> RunRecord:
    """A new run record (validated exactly as a reader would validate it). Raises ``UsageError``
    for a field no run may hold (bad names, duplicate names, text that is not valid Unicode)."""
    d = {
        "command": list(command),
        "contributor": {"email": contributor_email, "name": contributor_name},
        "cwd": cwd,
        "end_ns": end_ns,
        "env": dict(env),
        "exit_code": exit_code,
        "external": external,
        "git": dict(git) if git is not None else None,
        "host": host,
        "inputs": _links(inputs),
        "outputs": _links(outputs),
        "params": dict(params),
        "python": dict(python) if python is not None else None,
        "reproduces": reproduces,
        "start_ns": start_ns,
        "status": status,
        "version": RUN_VERSION,
    }
    try:
        raw = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise UsageError("a run field is not valid text", "pass command, params and names as UTF-8") from None
    from datamon.cas.hashing import key_of

    run_id = key_of(raw).hex()
    try:
        return decode_run(raw, run_id)
    except IntegrityError as e:
        raise UsageError(
            e.message.replace(f"run {run_id}: its record is damaged", "this run cannot be recorded")
        ) from None


def _damaged(run_id: str, why: str) -> IntegrityError:
    return IntegrityError(
        f"run {run_id or '(unknown)'}: its record is damaged ({why})",
        "restore the metadata database from a backup, or rebuild it with `datamon admin reindex`",
    )


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise ValueError("duplicate keys")
    return d


def _text(v: object, limit: int = 1 << 16) -> bool:
    return isinstance(v, str) and len(v) <= limit and not any("\ud800" <= c <= "\udfff" for c in v)


def _int(v: object, lo: int = -_INT64, hi: int = _INT64) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v < hi


def _str_map(v: object) -> bool:
    return (
        isinstance(v, dict) and len(v) <= 4096 and all(_text(k, 255) and k and _text(x) for k, x in v.items())
    )


def _decode_links(v: object, run_id: str, what: str) -> tuple[RunLink, ...]:
    from datamon.names import is_valid

    if not isinstance(v, list) or len(v) > 4096:
        raise _damaged(run_id, f"bad {what}")
    out = []
    for item in v:
        if not isinstance(item, dict) or set(item) != {"bundle", "name", "repo", "tree"}:
            raise _damaged(run_id, f"bad {what}")
        name, repo, bundle, tree = item["name"], item["repo"], item["bundle"], item["tree"]
        if not (isinstance(name, str) and LINK_NAME.match(name)):
            raise _damaged(run_id, f"bad {what} name")
        if not (isinstance(repo, str) and is_valid(repo)):
            raise _damaged(run_id, f"bad repo name in {what}")
        if not (
            isinstance(bundle, str) and _HEX64.match(bundle) and isinstance(tree, str) and _HEX64.match(tree)
        ):
            raise _damaged(run_id, f"bad bundle id or tree key in {what}")
        out.append(RunLink(name, repo, bundle, tree))
    names = [k.name for k in out]
    if names != sorted(set(names)):
        raise _damaged(run_id, f"{what} names not unique and sorted")
    return tuple(out)


def decode_run(raw: bytes, run_id: str = "") -> RunRecord:
    """The run a record describes, or ``IntegrityError`` naming ``run_id``. The record must be
    canonical version 1 with exactly the documented keys, types and bounds; this does not hash
    (``check_run`` does)."""
    if not isinstance(raw, bytes | bytearray) or len(raw) > MAX_RUN_BYTES:
        raise _damaged(run_id, "too large or not bytes")
    raw = bytes(raw)
    try:
        d = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _damaged(run_id, f"not JSON: {str(e)[:80]}") from None
    if not isinstance(d, dict) or set(d) != _KEYS:
        raise _damaged(run_id, "not a run record")
    if d["version"] != RUN_VERSION or not _int(d["version"]):
        raise _damaged(run_id, "unknown version")
    if d["status"] not in STATUSES:
        raise _damaged(run_id, "bad status")
    if d["exit_code"] is not None and not _int(d["exit_code"], -(1 << 31), 1 << 31):
        raise _damaged(run_id, "bad exit code")
    cmd = d["command"]
    if not isinstance(cmd, list) or len(cmd) > 65536 or not all(_text(a) for a in cmd):
        raise _damaged(run_id, "bad command")
    for key in ("params", "env"):
        if not _str_map(d[key]):
            raise _damaged(run_id, f"bad {key}")
    c = d["contributor"]
    if not isinstance(c, dict) or set(c) != {"email", "name"} or not all(_text(x, 1024) for x in c.values()):
        raise _damaged(run_id, "bad contributor")
    if not _text(d["cwd"], 4096) or not _text(d["host"], 1024):
        raise _damaged(run_id, "bad cwd or host")
    g = d["git"]
    if g is not None and not (
        isinstance(g, dict)
        and set(g) == {"commit", "dirty"}
        and isinstance(g["commit"], str)
        and _GIT.match(g["commit"])
        and isinstance(g["dirty"], bool)
    ):
        raise _damaged(run_id, "bad git")
    py = d["python"]
    if py is not None and not (
        isinstance(py, dict)
        and set(py) == {"digest", "packages", "version"}
        and isinstance(py["digest"], str)
        and _HEX64.match(py["digest"])
        and _int(py["packages"], 0, 1 << 31)
        and _text(py["version"], 64)
    ):
        raise _damaged(run_id, "bad python")
    if not (_int(d["start_ns"]) and _int(d["end_ns"])) or not isinstance(d["external"], bool):
        raise _damaged(run_id, "bad times or external flag")
    rep = d["reproduces"]
    if rep is not None and not (isinstance(rep, str) and _HEX64.match(rep)):
        raise _damaged(run_id, "bad reproduces")
    inputs = _decode_links(d["inputs"], run_id, "inputs")
    outputs = _decode_links(d["outputs"], run_id, "outputs")
    if outputs and d["status"] != "succeeded":
        raise _damaged(run_id, "a run that did not succeed has outputs")
    if json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() != raw:
        raise _damaged(run_id, "not in canonical form")
    return RunRecord(
        id=run_id,
        status=d["status"],
        exit_code=d["exit_code"],
        inputs=inputs,
        outputs=outputs,
        command=tuple(cmd),
        params=d["params"],
        cwd=d["cwd"],
        git=g,
        python=py,
        env=d["env"],
        host=d["host"],
        contributor_name=c["name"],
        contributor_email=c["email"],
        start_ns=d["start_ns"],
        end_ns=d["end_ns"],
        external=d["external"],
        reproduces=rep,
        raw=raw,
    )


def check_run(raw: bytes, run_id: str) -> RunRecord:
    """``raw`` decoded, if it hashes to ``run_id``; else ``IntegrityError`` (exit 4)."""
    from datamon.cas.hashing import key_of

    if key_of(bytes(raw)).hex() != run_id:
        raise _damaged(run_id, "does not hash to its id")
    return decode_run(raw, run_id)


def row_of(r: RunRecord) -> RunRow:
    return RunRow(
        id=r.id,
        status=r.status,
        exit_code=r.exit_code,
        started_ns=r.start_ns,
        ended_ns=r.end_ns,
        command=r.command_line,
        params=json.dumps(dict(r.params), sort_keys=True, ensure_ascii=False),
        contributor=f"{r.contributor_name} <{r.contributor_email}>",
        host=r.host,
        git_commit=r.git["commit"] if r.git else None,
        git_dirty=r.git["dirty"] if r.git else None,
        external=r.external,
        record=r.raw,
        inputs=r.inputs,
        outputs=r.outputs,
    )


def store_run(ctx: Context, r: RunRecord) -> str:
    """Write a run: blob ``runs/<id>`` first, then its rows. Idempotent; returns the id."""
    ctx.cas.blobs.put(RUN_BLOB_PREFIX + r.id, r.raw)
    ctx.meta.add_run(row_of(r))
    return r.id


def from_row(row: RunRow) -> RunRecord:
    """The record of a row, checked against the row's id and columns (``IntegrityError``)."""
    r = check_run(row.record, row.id)
    if row_of(r) != row:
        raise _damaged(row.id, "its columns differ from its record")
    return r


def get_run(ctx: Context, run_id: str) -> RunRecord:
    """The run with id (or unique 6+ hex prefix) ``run_id``. Raises ``NotFound``, ``AmbiguousId``,
    ``UsageError``, ``IntegrityError``."""
    return from_row(ctx.meta.resolve_run(run_id))


def list_runs(ctx: Context, repo: str | None = None, limit: int | None = None) -> list[RunRecord]:
    """Runs newest first (only those touching ``repo`` if given); raises ``IntegrityError`` on a
    damaged one."""
    if repo is not None:
        ctx.meta.get_repo(repo)
    return [from_row(r) for r in ctx.meta.list_runs(repo, limit)]


def load_run_blobs(ctx: Context) -> tuple[list[RunRecord], list[str]]:
    """Every run record in the blob store that hashes to its name, and the names of those that
    do not (for ``admin reindex``)."""
    good: list[RunRecord] = []
    bad: list[str] = []
    blobs = ctx.cas.blobs
    for name in sorted(blobs.list(RUN_BLOB_PREFIX)):
        rid = name[len(RUN_BLOB_PREFIX) :]
        if not _HEX64.match(rid):
            continue
        size = blobs.size(name)
        if size is None or size > MAX_RUN_BYTES:
            bad.append(name)
            continue
        try:
            good.append(check_run(blobs.get(name), rid))
        except IntegrityError:
            bad.append(name)
    return good, bad


def run_problems(ctx: Context, repo: str | None = None) -> tuple[int, list[tuple[str, str, str]]]:
    """Check every run (those touching ``repo`` if given): the record hashes to its id and agrees
    with its rows, its blob copy exists (what ``admin reindex`` rebuilds from), and the bundles it
    names still exist (or were rewritten by ``repo delete files``: the rewrite map says where they
    went). Returns (runs checked, [(run id, problem kind, detail)])."""
    rows = ctx.meta.list_runs(repo) if repo is not None else list(ctx.meta.iter_all_runs())
    out: list[tuple[str, str, str]] = []
    named = {k.bundle for row in rows for k in (*row.inputs, *row.outputs)}
    known: dict[str, bool] = {}
    for old, m in ctx.meta.final_rewrites(sorted(named)).items():
        if m.new_id is not None:  # rewritten: fine while what it became exists
            known[old] = ctx.meta.find_bundle(m.new_id) is not None
    blobs = ctx.cas.blobs
    for row in rows:
        try:
            r = from_row(row)
        except IntegrityError as e:
            out.append((row.id, "run-record", e.message))
            continue
        if blobs.size(RUN_BLOB_PREFIX + r.id) is None:
            out.append((r.id, "run-blob-missing", f"no copy at {RUN_BLOB_PREFIX}{r.id} in the blob store"))
        for what, links in (("input", r.inputs), ("output", r.outputs)):
            for k in links:
                if k.bundle not in known:
                    known[k.bundle] = ctx.meta.find_bundle(k.bundle) is not None
                if not known[k.bundle]:
                    out.append(
                        (
                            r.id,
                            "run-bundle-missing",
                            f"{what} {k.name}: bundle {k.bundle} of {k.repo} is gone",
                        )
                    )
    return len(rows), out
