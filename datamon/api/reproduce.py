"""``run reproduce``: run a recorded step again on the same inputs, and compare what it wrote.

The inputs are the recorded bundle ids (never the labels they were taken from), the params and
captured variables are the recorded values, the command runs in the recorded directory when it
still exists. With ``check``, each new output is compared with the recorded one by content — paths,
kinds, file keys, sizes, symlink targets and executable bits, as ``bundle diff`` compares; not by
tree key, which also covers modification times that a rerun always changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from datamon.api.runner import InputSpec, OutputSpec, Run, execute
from datamon.api.runs import RunRecord, get_run
from datamon.errors import UsageError

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.api.diff import Change
    from datamon.api.runner import Attach


@dataclass
class Reproduction:
    old: RunRecord
    new: RunRecord
    exit_code: int
    differences: dict[str, list[Change]] = field(default_factory=dict)  # output name -> changes

    @property
    def same(self) -> bool:
        return self.exit_code == 0 and not any(self.differences.values())


def _current(ctx: Context, repo: str) -> str:
    """The repo's name now (a run record names it as it was called then; ``repo rename``)."""
    return ctx.meta.current_repo_name(repo) or repo


def recorded_inputs(ctx: Context, old: RunRecord) -> list[InputSpec]:
    """The inputs of a recorded run, as they can be read now: repos by their current names, and
    bundles that ``repo delete files`` rewrote as what they became (the erased files are gone; a
    rewritten input whose bundle row is gone is written from its rewritten tree)."""
    moved = ctx.meta.final_rewrites([i.bundle for i in old.inputs])
    out = []
    for i in old.inputs:
        bundle, tree = i.bundle, i.tree
        m = moved.get(i.bundle)
        if m is not None:
            bundle, tree = (m.new_id or i.bundle), m.new_tree
        out.append(InputSpec(i.name, _current(ctx, i.repo), bundle, tree))
    return out


def reproduce(
    ctx: Context, run_id: str, *, check: bool = False, label: str | None = None, attach: Attach | None = None
) -> Reproduction:
    """Run ``run_id``'s command again; with ``check`` compare the outputs. Raises ``NotFound``,
    ``UsageError`` (an external run whose command cannot be run), ``IntegrityError``."""
    old = get_run(ctx, run_id)
    if not old.command:
        raise UsageError(
            f"run {old.id[:12]} recorded no command", "only runs with a command can be reproduced"
        )
    run = Run(
        ctx,
        recorded_inputs(ctx, old),
        [OutputSpec(o.name, _current(ctx, o.repo)) for o in old.outputs],
        params=old.params,
        label=label,
        command=old.command,
        env_capture=list(old.env),
        attach=attach,
        cwd=old.cwd if os.path.isdir(old.cwd) else None,
        reproduces=old.id,
    )
    new, code = execute(run, extra_env=old.env)
    out = Reproduction(old, new, code)
    if check and code == 0:
        from datamon.api.diff import diff_entries
        from datamon.cas.tree import EntryKind, TreeEntry

        def root(tree: str) -> TreeEntry:
            return TreeEntry("", EntryKind.DIR, 0o755, 0, 0, bytes.fromhex(tree))

        fresh = {o.name: o for o in new.outputs}
        for o in old.outputs:
            n = fresh.get(o.name)
            if n is not None and n.tree != o.tree:
                out.differences[o.name] = list(diff_entries(ctx, root(o.tree), root(n.tree)))
    return out
