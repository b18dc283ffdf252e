"""Retention: which bundles of a repo to keep (``datamon forget``, ``datamon repo squash``).

The policy follows restic's ``forget`` (0.14, the version this project benchmarks against) where
the names match. Bundles are taken newest first (ties broken by id). Each ``--keep-*`` rule with a
count N keeps the newest bundle of each of the N most recent distinct periods that hold a bundle:

* ``last``: every bundle is its own period;
* ``hourly``/``daily``/``weekly``/``monthly``/``yearly``: the bundle's UTC hour, day, ISO week,
  month, year;
* ``within D``: every bundle newer than (time of the newest bundle − D).

A bundle kept by any rule is kept; the reasons are reported. Besides the policy, labelled bundles
and the inputs of recorded runs that produced an output are kept unless the caller says otherwise.
Forgetting deletes bundle rows only (labels on them go, with history); ``datamon gc`` frees space.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from datamon.errors import UsageError

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.meta.records import BundleRecord


@dataclass(frozen=True)
class Policy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within_ns: int = 0
    keep_labelled: bool = True
    keep_run_inputs: bool = True

    def empty(self) -> bool:
        return not any(
            (self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly, self.within_ns)
        )


@dataclass
class Decision:
    bundle: BundleRecord
    keep: bool
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        b = self.bundle
        return {
            "id": b.id,
            "time_ns": b.created_ns,
            "message": b.message,
            "action": "keep" if self.keep else "forget",
            "reasons": self.reasons,
        }


def _utc(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


def _week(ns: int) -> str:
    y, w, _ = _utc(ns).isocalendar()
    return f"{y}-W{w:02d}"


_BUCKETS: tuple[tuple[str, Callable[[BundleRecord], object]], ...] = (
    ("last", lambda b: b.id),
    ("hourly", lambda b: _utc(b.created_ns).strftime("%Y-%m-%d %H")),
    ("daily", lambda b: _utc(b.created_ns).strftime("%Y-%m-%d")),
    ("weekly", lambda b: _week(b.created_ns)),
    ("monthly", lambda b: _utc(b.created_ns).strftime("%Y-%m")),
    ("yearly", lambda b: _utc(b.created_ns).strftime("%Y")),
)


def apply_policy(
    bundles: Sequence[BundleRecord],
    policy: Policy,
    *,
    labelled: set[str] | frozenset[str] = frozenset(),
    run_inputs: set[str] | frozenset[str] = frozenset(),
) -> list[Decision]:
    """Decide for every bundle, newest first. Pure: reads nothing, changes nothing."""
    ordered = sorted(bundles, key=lambda b: (-b.created_ns, b.id))
    left = {name: getattr(policy, name) for name, _ in _BUCKETS}
    last_key: dict[str, object] = {}
    newest = ordered[0].created_ns if ordered else 0
    out = []
    for b in ordered:
        d = Decision(b, False)
        for name, key_of in _BUCKETS:
            if left[name] <= 0:
                continue
            k = key_of(b)
            if name in last_key and last_key[name] == k:
                continue
            last_key[name] = k
            left[name] -= 1
            d.reasons.append(name if name == "last" else f"{name} {k}")
        if policy.within_ns and b.created_ns > newest - policy.within_ns:
            d.reasons.append("within")
        if policy.keep_labelled and b.id in labelled:
            d.reasons.append("labelled")
        if policy.keep_run_inputs and b.id in run_inputs:
            d.reasons.append("run input")
        d.keep = bool(d.reasons)
        out.append(d)
    return out


def _context_facts(ctx: Context, repo: str, bundles: Sequence[BundleRecord]) -> tuple[set[str], set[str]]:
    labelled = {lab.bundle_id for lab in ctx.meta.list_labels(repo)}
    # A run records the ids it read; a bundle ``repo delete files`` rewrote since is pinned by the
    # runs that read what it was rewritten from.
    origin = {b.id: b.id for b in bundles}
    frontier = list(origin)
    while frontier:
        into = ctx.meta.rewritten_into(frontier)
        frontier = []
        for new, olds in into.items():
            for old in olds:
                if old not in origin:
                    origin[old] = origin[new]
                    frontier.append(old)
    runs = ctx.meta.runs_with_input(list(origin))
    used = {origin[k.bundle] for r in runs if r.outputs for k in r.inputs if k.bundle in origin}
    return labelled, used


def forget(ctx: Context, repo: str, policy: Policy, *, dry_run: bool = False) -> list[Decision]:
    """Apply ``policy`` to ``repo`` and delete the bundles it does not keep (unless ``dry_run``).
    Raises ``UsageError`` for an empty policy (it would delete everything unlabelled),
    ``NotFound`` for an unknown repo."""
    if policy.empty():
        raise UsageError(
            "no --keep-* rule given: forget would remove every unlabelled bundle",
            "give a policy, e.g. --keep-last 10 --keep-daily 7 (see `datamon forget --help`)",
        )
    return _delete(ctx, repo, policy, dry_run)


def squash(ctx: Context, repo: str, *, retain_labels: bool = False, dry_run: bool = False) -> list[Decision]:
    """Keep only the latest bundle of ``repo`` (and its labelled ones with ``retain_labels``), as
    Datamon's ``repo squash``. Run inputs are not kept by squash."""
    return _delete(ctx, repo, Policy(last=1, keep_labelled=retain_labels, keep_run_inputs=False), dry_run)


def _delete(ctx: Context, repo: str, policy: Policy, dry_run: bool) -> list[Decision]:
    from datamon.api.bundles import check_record

    bundles = ctx.meta.list_bundles(repo)
    for b in bundles:
        check_record(b)
    labelled, used = _context_facts(ctx, repo, bundles)
    decisions = apply_policy(bundles, policy, labelled=labelled, run_inputs=used)
    if not dry_run:
        who = ctx.contributor
        for d in decisions:
            if not d.keep:
                ctx.meta.delete_bundle(repo, d.bundle.id, contributor=f"{who.name} <{who.email}>")
    return decisions
