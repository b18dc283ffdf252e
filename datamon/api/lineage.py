"""Lineage: the graph of bundles and runs around one bundle, walked upstream or downstream.

Nodes are bundles and runs; edges are ``parent`` (bundle → child bundle, from bundle records),
``input`` (bundle → run that read it) and ``output`` (run → bundle it wrote). A parent edge that a
run already explains (the run read the parent and wrote the child) is left out, so a step shows as
input → run → output. ``depth`` counts bundle generations: one step upstream of a bundle is its
parents, the run that wrote it and that run's inputs.

Every run is read through ``api/runs.py`` (record re-hashed and checked); every bundle through the
metadata store's checked records. A run may name a bundle that has since been deleted: it is a
node with ``missing=True``, never an error. A bundle that ``repo delete files`` rewrote is such a
node with ``rewritten_as`` set and a ``rewrite`` edge to what it became, and the walk goes on from
there (runs keep the ids they recorded; the rewrite map connects them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from datamon.api.runs import RunRecord, from_row

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.meta.records import BundleRecord


@dataclass(frozen=True)
class Node:
    kind: str  # "bundle" or "run"
    id: str
    depth: int
    repo: str = ""
    text: str = ""  # a bundle's message, a run's command line
    time_ns: int = 0
    missing: bool = False  # a bundle a run or record names that is not in the database any more
    rewritten_as: str | None = None  # a missing bundle that ``repo delete files`` rewrote as this id
    run: RunRecord | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "node", "kind": self.kind, "id": self.id, "depth": self.depth}
        if self.kind == "bundle":
            d.update(repo=self.repo, message=self.text, time_ns=self.time_ns, missing=self.missing)
            if self.rewritten_as is not None:
                d["rewritten_as"] = self.rewritten_as
        elif self.run is not None:
            r = self.run.as_dict()
            r.pop("id", None)
            d.update(r)
        return d


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    kind: str  # "parent", "input", "output" or "rewrite"

    def as_dict(self) -> dict[str, Any]:
        return {"type": "edge", "from": self.src, "to": self.dst, "kind": self.kind}


@dataclass
class Graph:
    root: str
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)

    def add_edge(self, e: Edge) -> None:
        if e not in self._edge_set:
            self._edge_set.add(e)
            self.edges.append(e)

    def __post_init__(self) -> None:
        self._edge_set: set[Edge] = set()


def _bundle_node(b: BundleRecord, depth: int) -> Node:
    return Node("bundle", b.id, depth, repo=b.repo, text=b.message, time_ns=b.created_ns)


def _run_node(r: RunRecord, depth: int) -> Node:
    return Node("run", r.id, depth, text=r.command_line, time_ns=r.start_ns, run=r)


def lineage(
    ctx: Context,
    bundle: BundleRecord,
    *,
    upstream: bool = True,
    downstream: bool = True,
    depth: int | None = None,
) -> Graph:
    """The lineage graph around ``bundle``. Raises ``IntegrityError`` for a damaged run record."""
    g = Graph(root=bundle.id)
    g.nodes[bundle.id] = _bundle_node(bundle, 0)
    if upstream:
        _walk(ctx, g, [bundle], depth, up=True)
    if downstream:
        _walk(ctx, g, [bundle], depth, up=False)
    return g


def _add_bundle(ctx: Context, g: Graph, bundle_id: str, repo: str, depth: int) -> BundleRecord | None:
    if bundle_id in g.nodes:
        return None
    b = ctx.meta.find_bundle(bundle_id)
    if b is None:
        moved = ctx.meta.final_rewrites([bundle_id]).get(bundle_id)
        new = ctx.meta.find_bundle(moved.new_id) if moved is not None and moved.new_id else None
        g.nodes[bundle_id] = Node(
            "bundle", bundle_id, depth, repo=repo, missing=True, rewritten_as=new.id if new else None
        )
        if new is None:
            return None
        g.add_edge(Edge(bundle_id, new.id, "rewrite"))
        if new.id in g.nodes:
            return None
        b = new
    from datamon.api.bundles import check_record

    check_record(b)
    g.nodes[b.id] = _bundle_node(b, depth)
    return b


def _walk(ctx: Context, g: Graph, start: list[BundleRecord], max_depth: int | None, *, up: bool) -> None:
    frontier = start
    level = 0
    meta = ctx.meta
    while frontier and (max_depth is None or level < max_depth):
        level += 1
        ids = [b.id for b in frontier]
        ids += [old for olds in meta.rewritten_into(ids).values() for old in olds]  # as runs recorded them
        nxt: list[BundleRecord] = []
        runs = [from_row(r) for r in (meta.runs_with_output(ids) if up else meta.runs_with_input(ids))]
        explained: set[tuple[str, str]] = set()  # (parent, child) pairs a run accounts for
        for r in runs:
            g.nodes.setdefault(r.id, _run_node(r, level))
            for i in r.inputs:
                for o in r.outputs:
                    explained.add((i.bundle, o.bundle))
            for link in r.inputs:
                g.add_edge(Edge(link.bundle, r.id, "input"))
                if up and (b := _add_bundle(ctx, g, link.bundle, link.repo, level)) is not None:
                    nxt.append(b)
            for link in r.outputs:
                g.add_edge(Edge(r.id, link.bundle, "output"))
                if not up and (b := _add_bundle(ctx, g, link.bundle, link.repo, level)) is not None:
                    nxt.append(b)
        if up:
            for b in frontier:
                for pid in b.parents:
                    if (pid, b.id) not in explained:
                        g.add_edge(Edge(pid, b.id, "parent"))
                        if (p := _add_bundle(ctx, g, pid, "", level)) is not None:
                            nxt.append(p)
        else:
            by_id = {b.id: b for b in frontier}
            for c in meta.child_bundles(list(by_id)):
                for pid in c.parents:
                    if pid in by_id and (pid, c.id) not in explained:
                        g.add_edge(Edge(pid, c.id, "parent"))
                        if (child := _add_bundle(ctx, g, c.id, c.repo, level)) is not None:
                            nxt.append(child)
        frontier = nxt


def to_dot(g: Graph) -> str:
    """Graphviz ``dot`` source: bundles as boxes (dashed if missing), runs as ellipses."""

    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    lines = ["digraph lineage {", "  rankdir=LR;", '  node [fontname="Helvetica"];']
    for n in g.nodes.values():
        if n.kind == "bundle":
            gone = "\n(rewritten)" if n.rewritten_as else "\n(deleted)"
            label = f"{n.repo}\n{n.id[:12]}" + (gone if n.missing else "")
            style = ", style=dashed" if n.missing else (", style=bold" if n.id == g.root else "")
            lines.append(f"  {q(n.id)} [shape=box, label={q(label)}{style}];")
        else:
            status = n.run.status if n.run else ""
            label = f"run {n.id[:12]} ({status})\n{n.text[:60].replace(chr(10), ' ')}"
            lines.append(f"  {q(n.id)} [shape=ellipse, label={q(label)}];")
    for e in g.edges:
        style = " [style=dotted]" if e.kind == "parent" else ""
        lines.append(f"  {q(e.src)} -> {q(e.dst)}{style};")
    lines.append("}")
    return "\n".join(lines) + "\n"
