"""Labels: movable names for bundles, moved by compare-and-swap."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.meta.records import LabelRecord

_ANY = object()


def set_label(
    ctx: Context, repo: str, label: str, bundle: str, *, expected: str | object | None = _ANY
) -> LabelRecord:
    """Point ``label`` at ``bundle`` (an id or unique prefix).

    With ``expected`` (an id or prefix, or ``None`` for "must not exist yet") the move only
    happens if the label still points there; otherwise ``LabelMoved`` (exit 3) carries the
    current value. Without it the move is unconditional but still atomic.
    """
    from datamon.meta.store import ANY

    meta = ctx.meta
    target = meta.resolve_bundle(repo, bundle).id if len(bundle) != 64 else meta.get_bundle(repo, bundle).id
    exp: str | object | None = ANY
    if expected is not _ANY:
        if expected is None or expected == "":
            exp = None
        else:
            exp_s = str(expected).lower()
            exp = exp_s if len(exp_s) == 64 else meta.resolve_bundle(repo, exp_s).id
    return meta.set_label(repo, label, target, expected=exp, contributor=str(ctx.contributor))
