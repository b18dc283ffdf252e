"""Random sequences of upload / label move / bundle delete / gc / download against a model."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from datamon.api.gc import gc
from datamon.api.verify import verify
from tests.integrity.helpers import contents, open_ctx, rand, write_tree

# A small pool of contents, so bundles share files; packs are small, so most hold objects of
# several files and gc has packs to rewrite; the last two contents have several chunks.
POOL = [
    b"",
    b"a",
    b"hello\n" * 500,
    rand(40_000, 1),
    rand(90_000, 2),
    rand(150_000, 3),
    rand(1_200_000, 4),
    rand(2_600_000, 5),
]
NAMES = ["a.bin", "b.txt", "d/c.bin", "d/e/f.bin", "g.dat", "h.dat"]

trees = st.dictionaries(
    st.sampled_from(NAMES), st.sampled_from(range(len(POOL))), min_size=1, max_size=4
).filter(lambda d: not ({"d/c.bin", "d/e/f.bin"} & set(d) and "d" in d))


class StoreModel(RuleBasedStateMachine):
    bundle_ids = Bundle("bundle_ids")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="datamon-stateful-"))
        self.ctx = open_ctx(self.tmp / "s")
        self.ctx.cas.pack_size = 200 << 10
        self.ctx.create_repo("r")
        self.model: dict[str, dict[str, bytes]] = {}  # bundle id → expected files
        self.labels: dict[str, str] = {}
        self.n = 0

    @rule(target=bundle_ids, spec=trees)
    def upload(self, spec: dict[str, int]) -> str:
        self.n += 1
        files = {name: POOL[i] for name, i in spec.items()}
        src = write_tree(self.tmp / f"src{self.n}", files)
        bid = self.ctx.upload("r", src, message=f"u{self.n}").bundle.id
        self.model[bid] = files
        shutil.rmtree(src)
        return bid

    @rule(bid=bundle_ids, label=st.sampled_from(["prod", "dev"]))
    def move_label(self, bid: str, label: str) -> None:
        if bid in self.model:
            self.ctx.set_label("r", label, bid)
            self.labels[label] = bid

    @rule(bid=consumes(bundle_ids))
    def delete(self, bid: str) -> None:
        if bid in self.model:
            self.ctx.meta.delete_bundle("r", bid)
            del self.model[bid]
            self.labels = {k: v for k, v in self.labels.items() if v != bid}

    @rule(dry=st.booleans(), ratio=st.sampled_from([0.0, 0.2]))
    def collect(self, dry: bool, ratio: float) -> None:
        gc(self.ctx, grace_ns=0, dry_run=dry, repack_ratio=ratio)
        r = verify(self.ctx)  # every bundle still fully indexed, every pack it needs present
        assert r.ok, r.affected

    @rule(bid=bundle_ids)
    def download(self, bid: str) -> None:
        if bid in self.model:
            self.n += 1
            dest = self.tmp / f"dl{self.n}"
            self.ctx.download("r", dest, bundle=bid)
            assert contents(dest) == self.model[bid]
            shutil.rmtree(dest)

    @invariant()
    def labels_match(self) -> None:
        got = {lab.name: lab.bundle_id for lab in self.ctx.meta.list_labels("r")}
        assert got == self.labels

    def teardown(self) -> None:
        try:
            gc(self.ctx, grace_ns=0)
            r = verify(self.ctx, full=True)
            assert r.ok, r.affected
            assert {b.id for b in self.ctx.list_bundles("r")} == set(self.model)
            for bid in self.model:
                self.download(bid)
            if not self.model:  # everything deleted and collected: nothing left but the store file
                assert not list((self.tmp / "s" / "blobs" / "packs").rglob("*.pack"))
        finally:
            self.ctx.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


StoreModel.TestCase.settings = settings(
    max_examples=15,
    stateful_step_count=15,
    deadline=None,
    derandomize=True,  # the same sequences every run: a stable time budget in CI
    # No shrinking: it can outlast the test timeout; the failing sequence is printed as it is.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
test_store_model = StoreModel.TestCase
