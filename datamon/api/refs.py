"""``REPO@REF`` references, as ``datamon run``, ``datamon://`` and lineage read them.

``REF`` is a bundle id or a unique prefix of 6+ hex characters, ``label:NAME`` for a label whose
name looks like hex, or else a label; no ``@REF`` means the latest bundle.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

from datamon.errors import UsageError

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.meta.records import BundleRecord

HEX_REF: Final = re.compile(r"^[0-9a-fA-F]{6,64}$")


def split_ref(text: str) -> tuple[str, str | None]:
    """``"mnist@prod"`` → ``("mnist", "prod")``; ``"mnist"`` → ``("mnist", None)``."""
    repo, at, ref = text.partition("@")
    if not repo or (at and not ref):
        raise UsageError(
            f"{text!r} is not REPO or REPO@REF", "e.g. mnist@prod, or mnist@3fa2c1 for a bundle id"
        )
    return repo, ref if at else None


def ref_is_id(ref: str) -> bool:
    """Whether ``ref`` names a bundle id (a prefix of 6+ hex) rather than a label."""
    return bool(HEX_REF.match(ref))


def resolve_ref(ctx: Context, repo: str, ref: str | None) -> BundleRecord:
    """The bundle ``REPO@REF`` names (checked against its record). Raises ``NotFound``,
    ``AmbiguousId``, ``UsageError``, ``IntegrityError``."""
    from datamon.api.bundles import resolve

    if ref is None:
        return resolve(ctx, repo)
    if ref.startswith("label:"):
        return resolve(ctx, repo, label=ref[len("label:") :])
    if ref_is_id(ref):
        return resolve(ctx, repo, bundle=ref)
    return resolve(ctx, repo, label=ref)


def parent_id(ctx: Context, repo: str, ref: str) -> str:
    """The id of a parent given to an upload: a bundle of ``repo`` (id or 6+ hex prefix), or a
    full 64-hex id of a bundle of another repo (a run's output names its inputs, wherever they
    live). Raises ``NotFound``, ``AmbiguousId``, ``UsageError``."""
    from datamon.errors import NotFound

    try:
        return ctx.meta.resolve_bundle(repo, ref).id
    except NotFound:
        full = ref.strip().lower()
        if len(full) == 64 and ctx.meta.find_bundle(full) is not None:
            return full
        raise
