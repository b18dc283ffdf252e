"""Records of a bundle's files for building datasets (no PyTorch needed here).

::

    import fsspec, torch, datamon.data
    class Files(torch.utils.data.Dataset):
        def __init__(self, url): self.items = datamon.data.records(url, pattern=r"\\.png$")
        def __len__(self): return len(self.items)
        def __getitem__(self, i): return fsspec.open(self.items[i].url).open().read()

``records`` resolves the reference once: every record's ``url`` names the bundle by its full
id, so a dataset built from ``mnist@prod`` keeps reading the same bytes when ``prod`` moves.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class FileRecord:
    path: str  # relative to the directory the records were listed from
    url: str  # datamon://REPO@BUNDLE-ID/PATH: open it with fsspec, pandas, pyarrow …
    size: int
    key: str  # file key (BLAKE3 hex, what `b3sum` prints)
    mode: int
    mtime_ns: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def records(
    url: str,
    *,
    pattern: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> list[FileRecord]:
    """The regular files at or below ``url`` (``datamon://REPO@REF/DIR``, ``datamon://lock:NAME``),
    in path order; ``pattern`` is a regex searched in each relative path. Raises
    ``FileNotFoundError`` for an unknown repo, ref or directory."""
    import fsspec

    from datamon.fs import DatamonFileSystem

    options = {**DatamonFileSystem._get_kwargs_from_urls(url), **(storage_options or {})}
    fs = fsspec.filesystem("datamon", **options)
    assert isinstance(fs, DatamonFileSystem)
    base = fs._strip_protocol(url)
    info = fs.info(base)
    top = base.split("/", 1)[0]
    pinned = f"{info['repo']}@{info['bundle']}" if top else ""
    query = f"?context={options['context']}" if isinstance(options.get("context"), str) else ""
    rx = re.compile(pattern) if pattern else None
    found = fs.find(base, detail=True) if info["type"] == "directory" else {base: info}
    out = []
    for name in sorted(found):
        i = found[name]
        if i["type"] != "file":
            continue
        rel = name[len(base) :].lstrip("/") if info["type"] == "directory" else name.rsplit("/", 1)[-1]
        if rx is not None and not rx.search(rel):
            continue
        inner = name.split("/", 1)[1] if "/" in name else ""
        out.append(
            FileRecord(
                path=rel,
                url=f"datamon://{pinned}/{inner}{query}",
                size=i["size"],
                key=i["key"],
                mode=i["mode"],
                mtime_ns=i["mtime_ns"],
            )
        )
    return out
