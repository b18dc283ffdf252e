"""Labels: movable names for bundles, moved by compare-and-swap."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.meta.records import LabelRecord

_ANY = object()


def _bundle_ref(value: object, what: str) -> str:
    """A bundle id or prefix, lowercased: 6 to 64 hex characters, else ``UsageError`` (exit 1)."""
    from datamon.errors import UsageError

    text = value.strip().lower() if isinstance(value, str) else ""
    if not 6 <= len(text) <= 64 or any(c not in "0123456789abcdef" for c in text):
        raise UsageError(
            f"the {what} {str(value)[:80]!r} is not a bundle id or id prefix",
            "give 6 to 64 hex characters of a bundle id (see `datamon bundle list`), or 'none'",
        )
    return text


def set_label(
    ctx: Context, repo: str, label: str, bundle: str, *, expected: str | object | None = _ANY
) -> LabelRecord:
    """Point ``label`` at ``bundle`` (an id or unique prefix).

    With ``expected`` (an id or prefix, or ``None`` for "must not exist yet") the move only
    happens if the label still points there; otherwise ``LabelMoved`` (exit 3) carries the
    current value. Without it the move is unconditional but still atomic.
    """
    from datamon.meta.store import ANY
    from datamon.names import check_lookup, check_name

    check_lookup("repo", repo)
    check_name("label", label)
    meta = ctx.meta
    b = _bundle_ref(bundle, "bundle")
    target = meta.resolve_bundle(repo, b).id if len(b) != 64 else meta.get_bundle(repo, b).id
    exp: str | object | None = ANY
    if expected is not _ANY:
        if expected is None or (isinstance(expected, str) and expected.strip() == ""):
            exp = None
        else:
            exp_s = _bundle_ref(expected, "expected bundle")
            exp = exp_s if len(exp_s) == 64 else meta.resolve_bundle(repo, exp_s).id
    return meta.set_label(repo, label, target, expected=exp, contributor=str(ctx.contributor))
