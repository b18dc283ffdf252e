"""Worker for the multi-process label race (imported by spawned children, so kept light)."""

from __future__ import annotations

from typing import Any

from datamon.errors import LabelMoved


def set_label_worker(url: str, bundle_id: str, expected: str, barrier: Any, results: Any) -> None:
    from datamon.meta.store import MetadataStore

    store = MetadataStore(url)
    try:
        barrier.wait(timeout=60)
        try:
            store.set_label("r", "prod", bundle_id, expected=expected, contributor=bundle_id)
            results.put(("won", bundle_id))
        except LabelMoved as e:
            results.put(("moved", e.current))
    except BaseException as e:  # report anything else instead of dying silently
        results.put(("error", repr(e)))
    finally:
        store.close()


def open_worker(url: str, barrier: Any, results: Any) -> None:
    barrier.wait(timeout=60)
    try:
        from datamon.meta.store import MetadataStore

        MetadataStore(url).close()
        results.put("ok")
    except BaseException as e:
        results.put(repr(e))
