"""The agent loop over in-memory pipes: protocol order, progress, per-object failures."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

from datamon.api.context import Context
from datamon.api.lfs import ContentMismatch
from datamon.api.progress import Progress
from datamon.errors import NotFound
from datamon.lfs import protocol as P
from datamon.lfs.agent import Agent, ApiTransfers, InitFailed
from tests.lfs.conftest import lines, oid_of, replies

A = b"hello lfs"
OA = oid_of(A)
INIT_UP = {"event": "init", "operation": "upload", "concurrent": True, "concurrenttransfers": 8}
INIT_DOWN = {"event": "init", "operation": "download", "concurrent": False, "concurrenttransfers": 1}
TERM = {"event": "terminate"}


class FakeTransfers:
    """Objects in a dict; downloads are written to ``tmp``."""

    def __init__(self, tmp: Path) -> None:
        self.objects: dict[str, bytes] = {}
        self.tmp = tmp
        self.boom: Exception | None = None

    def upload(self, req: P.Upload, progress: Progress) -> None:
        if self.boom:
            raise self.boom
        data = Path(req.path).read_bytes()
        if oid_of(data) != req.oid:
            raise ContentMismatch(f"object {req.oid}: wrong bytes")
        for i in range(0, len(data), 3):
            progress.advance(0, len(data[i : i + 3]))
        self.objects[req.oid] = data

    def download(self, req: P.Download, progress: Progress) -> str:
        if req.oid not in self.objects:
            raise NotFound(f"object {req.oid} not found")
        p = self.tmp / f"{req.oid}.tmp"
        p.write_bytes(self.objects[req.oid])
        progress.advance(0, req.size)
        return str(p)


def run(stdin: io.BytesIO, transfers: object, *, step: int = 1) -> tuple[int, list[dict[str, object]]]:
    out = io.BytesIO()

    def opener(init: P.Init) -> object:
        if isinstance(transfers, Exception):
            raise transfers
        return transfers

    code = Agent(opener, stdin, out, progress_step=step).serve()  # type: ignore[arg-type]
    return code, replies(out)


def test_upload_then_download_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "a"
    src.write_bytes(A)
    t = FakeTransfers(tmp_path)
    code, got = run(
        lines(
            INIT_UP, {"event": "upload", "oid": OA, "size": len(A), "path": str(src), "action": None}, TERM
        ),
        t,
    )
    assert code == 0
    assert got[0] == {}
    assert all(m["event"] == "progress" and m["oid"] == OA for m in got[1:-1])
    assert [m["bytesSoFar"] for m in got[1:-1]] == [3, 6, 9]
    assert sum(m["bytesSinceLast"] for m in got[1:-1]) == len(A)  # type: ignore[misc]
    assert got[-1] == {"event": "complete", "oid": OA}

    code, got = run(lines(INIT_DOWN, {"event": "download", "oid": OA, "size": len(A)}, TERM), t)
    assert got[0] == {}
    assert got[-2]["bytesSoFar"] == len(A)
    assert got[-1]["event"] == "complete" and Path(str(got[-1]["path"])).read_bytes() == A


def test_progress_is_throttled_but_always_ends_at_the_size(tmp_path: Path) -> None:
    src = tmp_path / "a"
    src.write_bytes(A)
    _, got = run(
        lines(INIT_UP, {"event": "upload", "oid": OA, "size": len(A), "path": str(src)}, TERM),
        FakeTransfers(tmp_path),
        step=1 << 20,
    )
    assert got[1:] == [P.progress(OA, len(A), len(A)), {"event": "complete", "oid": OA}]


def test_empty_object_gets_one_progress_message(tmp_path: Path) -> None:
    src = tmp_path / "empty"
    src.write_bytes(b"")
    oid = oid_of(b"")
    _, got = run(
        lines(INIT_UP, {"event": "upload", "oid": oid, "size": 0, "path": str(src)}), FakeTransfers(tmp_path)
    )
    assert got[1:] == [P.progress(oid, 0, 0), {"event": "complete", "oid": oid}]


def test_a_failed_object_is_reported_in_its_complete_and_the_agent_keeps_serving(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"not what the oid says")
    good = tmp_path / "good"
    good.write_bytes(A)
    t = FakeTransfers(tmp_path)
    code, got = run(
        lines(
            INIT_UP,
            {"event": "upload", "oid": OA, "size": 21, "path": str(bad)},
            {"event": "download", "oid": "cd" * 32, "size": 5},
            {"event": "upload", "oid": OA, "size": len(A), "path": str(good)},
            TERM,
        ),
        t,
        step=1 << 20,
    )
    assert code == 0
    completes = [m for m in got if m.get("event") == "complete"]
    assert completes[0]["error"]["code"] == P.MISMATCH  # type: ignore[index]
    assert completes[1] == {
        "event": "complete",
        "oid": "cd" * 32,
        "error": {"code": 404, "message": f"object {'cd' * 32} not found"},
    }
    assert completes[2] == {"event": "complete", "oid": OA}
    assert t.objects == {OA: A}


def test_a_bug_in_a_transfer_is_an_internal_error_not_a_crash(tmp_path: Path) -> None:
    t = FakeTransfers(tmp_path)
    t.boom = RuntimeError("kaput")
    _, got = run(lines(INIT_UP, {"event": "upload", "oid": OA, "size": 1, "path": "/x"}, TERM), t)
    err = got[-1]["error"]
    assert err["code"] == P.INTERNAL and "kaput" in err["message"] and "GIT_TRACE" in err["message"]  # type: ignore[index]


def test_os_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    _, got = run(
        lines(INIT_UP, {"event": "upload", "oid": OA, "size": 1, "path": str(missing)}),
        FakeTransfers(tmp_path),
    )
    err = got[-1]["error"]
    assert err["code"] == P.INTERNAL and str(missing) in err["message"]  # type: ignore[index]


def test_init_failure_is_answered_and_later_requests_fail_with_it(tmp_path: Path) -> None:
    code, got = run(
        lines(INIT_DOWN, {"event": "download", "oid": OA, "size": 1}, TERM),
        InitFailed(P.NOT_FOUND, "datamon repo 'x' does not exist"),
    )
    assert code == 0
    assert got[0] == {"error": {"code": 404, "message": "datamon agent: datamon repo 'x' does not exist"}}
    assert got[1]["oid"] == OA and got[1]["error"]["code"] == 404  # type: ignore[index]


def test_init_failure_from_a_datamon_error_or_a_bug(tmp_path: Path) -> None:
    _, got = run(lines(INIT_DOWN), NotFound("repo 'x' does not exist", "create it"))
    assert got == [{"error": {"code": 404, "message": "datamon agent: repo 'x' does not exist; create it"}}]
    _, got = run(lines(INIT_DOWN), ValueError("weird"))
    assert got[0]["error"]["code"] == P.INTERNAL and "weird" in got[0]["error"]["message"]  # type: ignore[index]


def test_transfer_before_init_fails_that_object(tmp_path: Path) -> None:
    _, got = run(lines({"event": "download", "oid": OA, "size": 1}), FakeTransfers(tmp_path))
    assert got[0]["oid"] == OA and "no init" in got[0]["error"]["message"]  # type: ignore[index]


def test_second_init_is_refused(tmp_path: Path) -> None:
    _, got = run(lines(INIT_UP, INIT_UP), FakeTransfers(tmp_path))
    assert got[0] == {} and got[1]["error"]["code"] == P.BAD_REQUEST  # type: ignore[index]


def test_malformed_lines_get_an_error_reply_and_do_not_stop_the_agent(tmp_path: Path) -> None:
    src = tmp_path / "a"
    src.write_bytes(A)
    code, got = run(
        lines(
            "this is not json",  # before init: git-lfs is waiting for an init reply
            INIT_UP,
            "{broken",
            {"event": "verify", "oid": OA},
            {"event": "upload", "oid": "XYZ", "size": 1, "path": "/p"},
            {"event": "upload", "oid": OA, "size": len(A), "path": str(src)},
            TERM,
        ),
        FakeTransfers(tmp_path),
        step=1 << 20,
    )
    assert code == 0
    assert "not valid JSON" in got[0]["error"]["message"] and "event" not in got[0]  # type: ignore[index]
    assert got[1] == {}
    assert got[2]["event"] == "complete" and got[2]["oid"] == "" and got[2]["error"]["code"] == 400  # type: ignore[index]
    assert got[3]["oid"] == OA and "unknown event 'verify'" in got[3]["error"]["message"]  # type: ignore[index]
    assert "valid 'oid'" in got[4]["error"]["message"]  # type: ignore[index]
    assert got[-1] == {"event": "complete", "oid": OA}


def test_end_of_input_without_terminate_exits_cleanly(tmp_path: Path) -> None:
    assert run(lines(), FakeTransfers(tmp_path)) == (0, [])
    code, got = run(lines(INIT_UP, ""), FakeTransfers(tmp_path))  # a blank line is skipped
    assert (code, got) == (0, [{}])


def test_nothing_is_read_after_terminate(tmp_path: Path) -> None:
    stdin = lines(INIT_UP, TERM, {"event": "upload", "oid": OA, "size": 1, "path": "/p"})
    code, got = run(stdin, FakeTransfers(tmp_path))
    assert (code, got) == (0, [{}])
    assert stdin.read().startswith(b'{"event": "upload"')


def test_a_closed_stdout_ends_the_agent(tmp_path: Path) -> None:
    class Broken(io.BytesIO):
        def write(self, b: object) -> int:
            raise BrokenPipeError

    code = Agent(lambda i: FakeTransfers(tmp_path), lines(INIT_UP), Broken()).serve()  # type: ignore[arg-type,return-value]
    assert code == 1


# -- the real store ----------------------------------------------------------------------------
def _api_run(ctx: Context, tmp: Path, *msgs: dict[str, object]) -> list[dict[str, object]]:
    out = io.BytesIO()
    Agent(lambda init: ApiTransfers(ctx, "proj", lambda: str(tmp)), lines(INIT_UP, *msgs, TERM), out).serve()
    return replies(out)[1:]


def test_api_transfers_store_verify_and_fetch(ctx: Context, tmp_path: Path) -> None:
    data = random.Random(3).randbytes(3 << 20) + b"tail"
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    oid = oid_of(data)
    got = _api_run(ctx, tmp_path, {"event": "upload", "oid": oid, "size": len(data), "path": str(src)})
    assert got[-1] == {"event": "complete", "oid": oid}
    assert got[-2]["bytesSoFar"] == len(data)
    assert ctx.meta.get_lfs_object("proj", oid) is not None

    dl = tmp_path / "dl"
    dl.mkdir()
    got = _api_run(ctx, dl, {"event": "download", "oid": oid, "size": len(data)})
    path = Path(str(got[-1]["path"]))
    assert path.parent == dl and path.read_bytes() == data
    assert got[-2]["bytesSoFar"] == len(data)
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


def test_api_upload_with_wrong_bytes_stores_nothing_under_the_oid(ctx: Context, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"real bytes")
    wrong = oid_of(b"other bytes")
    got = _api_run(ctx, tmp_path, {"event": "upload", "oid": wrong, "size": 10, "path": str(src)})
    assert got[-1]["error"]["code"] == P.MISMATCH  # type: ignore[index]
    assert "SHA-256" in got[-1]["error"]["message"]  # type: ignore[index]
    assert ctx.meta.get_lfs_object("proj", wrong) is None
    got = _api_run(
        ctx, tmp_path, {"event": "upload", "oid": oid_of(b"real bytes"), "size": 99, "path": str(src)}
    )
    assert got[-1]["error"]["code"] == P.MISMATCH and "99" in got[-1]["error"]["message"]  # type: ignore[index]


def test_api_download_of_unknown_object_is_not_found_and_leaves_no_file(ctx: Context, tmp_path: Path) -> None:
    dl = tmp_path / "dl"
    dl.mkdir()
    got = _api_run(ctx, dl, {"event": "download", "oid": OA, "size": len(A)})
    assert got[-1]["error"]["code"] == P.NOT_FOUND and "not found" in got[-1]["error"]["message"]  # type: ignore[index]
    assert list(dl.iterdir()) == []


def test_api_download_of_damaged_store_fails_and_leaves_no_file(
    ctx: Context, tmp_path: Path, datamon_home: Path
) -> None:
    data = random.Random(4).randbytes(1 << 20)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    oid = oid_of(data)
    _api_run(ctx, tmp_path, {"event": "upload", "oid": oid, "size": len(data), "path": str(src)})
    for pack in (datamon_home / "blobs").rglob("*.pack"):
        pack.unlink()
    dl = tmp_path / "dl"
    dl.mkdir()
    got = _api_run(ctx, dl, {"event": "download", "oid": oid, "size": len(data)})
    assert got[-1]["error"]["code"] == P.INTERNAL and "missing" in got[-1]["error"]["message"]  # type: ignore[index]
    assert list(dl.iterdir()) == []
