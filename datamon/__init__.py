"""datamon: git for datasets.

The Python API lives in ``datamon.api``; ``datamon.connect()`` opens the configured context::

    import datamon
    dm = datamon.connect()                 # $DATAMON_HOME, default ~/.datamon
    dm.create_repo("mnist")
    b = dm.upload("mnist", "./data", message="first cut", label="prod")
    with dm.open_file("mnist", "train/labels.csv", label="prod") as f:
        head = f.read(100)
    dm.download("mnist", "./restore", bundle=b.id)

Heavy modules are imported lazily so that the CLI starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from datamon.api.context import Context


def connect(context: str | None = None, **kwargs: Any) -> Context:
    """Open a context by name from the config (default context when ``None``)."""
    from datamon.api.context import connect as _connect

    return _connect(context, **kwargs)


__all__ = ["__version__", "connect"]
