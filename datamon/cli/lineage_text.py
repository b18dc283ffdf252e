"""Human text for a lineage graph: the root bundle, then an indented tree each way."""

from __future__ import annotations

from collections.abc import Iterator

from datamon.api.lineage import Graph, Node
from datamon.cli.render import iso, safe


def _describe(n: Node) -> str:
    if n.kind == "bundle":
        if n.missing and n.rewritten_as:
            return f"bundle {n.id[:12]} {n.repo} (rewritten as {n.rewritten_as[:12]})".replace("  ", " ")
        if n.missing:
            return f"bundle {n.id[:12]} {n.repo} (deleted)".replace("  ", " ")
        return f"bundle {n.id[:12]} {n.repo} {iso(n.time_ns)} {n.text[:80]!r}"
    r = n.run
    assert r is not None
    parts = [f"run {n.id[:12]} {r.status}", iso(r.start_ns), r.command_line[:120]]
    if r.git:
        parts.append(f"[git {r.git['commit'][:12]}{' dirty' if r.git['dirty'] else ''}]")
    if r.params:
        parts.append("[" + " ".join(f"{k}={v}" for k, v in sorted(r.params.items())) + "]")
    return " ".join(parts)


def render_text(g: Graph) -> Iterator[str]:
    """Lines: the root, then ``upstream:`` and ``downstream:`` trees (a node met twice is shown
    once, then named as ``(above)``)."""
    yield safe(_describe(g.nodes[g.root]))
    ups: dict[str, list[str]] = {}
    downs: dict[str, list[str]] = {}
    for e in g.edges:
        ups.setdefault(e.dst, []).append(e.src)
        downs.setdefault(e.src, []).append(e.dst)
    for title, arrow, nxt in (("upstream", "<-", ups), ("downstream", "->", downs)):
        if not nxt.get(g.root):
            continue
        yield f"{title}:"
        seen = {g.root}
        stack = [(c, 1) for c in reversed(nxt[g.root])]
        while stack:
            node_id, level = stack.pop()
            node = g.nodes.get(node_id)
            text = _describe(node) if node is not None else node_id[:12]
            if node_id in seen:
                yield safe(f"{'  ' * level}{arrow} {text.split(' ')[0]} {node_id[:12]} (above)")
                continue
            seen.add(node_id)
            yield safe(f"{'  ' * level}{arrow} {text}")
            stack.extend((c, level + 1) for c in reversed(nxt.get(node_id, [])))
