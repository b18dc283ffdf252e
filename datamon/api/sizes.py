"""How big a repo is: ``repo list/get --with-size``.

Two numbers, because deduplication makes "the size of a repo" two questions:

- ``logical``: the bytes of the repo's latest bundle (the sum of its file sizes), as its verified
  record states them — what a download of the latest bundle writes;
- ``stored``: the bytes in packs of every object (chunk, file map, tree) that some bundle of the
  repo references, each distinct object counted once, at its stored (compressed) length. Objects
  shared with other repos are counted in each of them: this is what the repo holds on to, not what
  deleting it would free (``gc --dry-run`` after a delete answers that).

``stored`` walks every tree and file map of the repo (reading them from the blob store, verified
as ``verify`` reads them), so it costs about what ``verify`` of those bundles costs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datamon.api.context import Context


@dataclass(frozen=True)
class RepoSize:
    logical: int  # bytes of the latest bundle's files
    stored: int  # packed bytes of the distinct objects the repo's bundles reference
    objects: int  # how many distinct objects that is
    missing: int  # referenced objects the store could not give (see `datamon verify`)


def repo_size(ctx: Context, repo: str) -> RepoSize:
    """The two sizes of ``repo`` (``NotFound`` for an unknown repo; ``IntegrityError`` if the
    latest bundle's record does not hash to its id)."""
    from datamon.api.bundles import check_record
    from datamon.api.verify import Reach
    from datamon.cas.pack import Kind
    from datamon.meta.records import decode_record

    ctx.meta.get_repo(repo)
    bundles = ctx.meta.list_bundles(repo)
    logical = 0
    if bundles:
        latest = bundles[0]
        check_record(latest)
        logical = decode_record(latest.record, latest.id).total_size
    reach = Reach(ctx)
    reach.walk((bytes.fromhex(b.tree), Kind.TREE) for b in bundles)
    stored = sum(row[3] for row in reach.rows.values())
    return RepoSize(logical, stored, len(reach.rows), len(reach.bad))
