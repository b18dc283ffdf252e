"""The Python API: one function per verb, each taking a ``Context`` first.

``datamon.connect()`` opens the configured context; ``Context(blob_url, meta_url)`` opens
explicit stores (``memory://`` and ``sqlite://`` for tests).
"""

from datamon.api.context import Context, connect

__all__ = ["Context", "connect"]
