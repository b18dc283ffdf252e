"""A split task that fails its first attempt part-way (for the Dask retry test). Importable by
Dask worker processes (the checkout is on their PYTHONPATH)."""

from __future__ import annotations

import os
from typing import Any


def first_attempt_fails(marker_dir: str, fn: Any, *args: Any, **kw: Any) -> Any:
    """Run ``fn`` — except on the first attempt of split ``part-0001``, which starts its split
    (as a worker that then dies would) and raises."""
    spec, repo, diamond, _source, split = args[:5]
    marker = os.path.join(marker_dir, f"{diamond}-{split}")
    if split == "part-0001" and not os.path.exists(marker):
        open(marker, "w").close()
        with spec.open() as ctx:
            ctx.meta.start_split(repo, diamond, split, generation="doomed", now_ns=1)
        raise RuntimeError("worker lost mid-split")
    return fn(*args, **kw)


class FlakyClient:
    """A Dask client whose submitted split tasks go through ``first_attempt_fails``."""

    def __init__(self, client: Any, marker_dir: str) -> None:
        self.client = client
        self.marker_dir = marker_dir

    def submit(self, fn: Any, *args: Any, **kw: Any) -> Any:
        return self.client.submit(first_attempt_fails, self.marker_dir, fn, *args, **kw)

    def nthreads(self) -> Any:
        return self.client.nthreads()
