"""Real kernel mounts through the CLI, checked with ordinary tools (cat, cmp, ls, find, stat, open)."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import tree_files
from tests.fuse.conftest import make_source, rand

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="/dev/fuse is absent: no kernel FUSE here"),
]

CLI = [sys.executable, "-m", "datamon.cli"]


def cli(*args: object, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def sh(cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, cwd=cwd, timeout=60)


def wait_for(cond, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def unmount(path: Path) -> None:
    for args in (["-u"], ["-uz"]):
        if not os.path.ismount(path):
            return
        subprocess.run(["fusermount3", *args, str(path)], capture_output=True, timeout=30)


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1].startswith("Z")  # a zombie nobody reaps yet
    except FileNotFoundError:
        return True


class Mounts:
    """Mount points and mount processes that teardown must clean up, whatever happened."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.points: list[Path] = []
        self.procs: list[subprocess.Popen[str]] = []

    def point(self, name: str = "mnt") -> Path:
        p = self.root / name
        p.mkdir(parents=True)
        self.points.append(p)
        return p

    def foreground(self, *args: object, mnt: Path) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [*CLI, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.procs.append(proc)
        wait_for(lambda: os.path.ismount(mnt) or proc.poll() is not None)
        assert os.path.ismount(mnt), proc.communicate()
        return proc

    def cleanup(self) -> None:
        for p in self.points:
            unmount(p)
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Mounts]:
    m = Mounts(tmp_path / "mounts")
    try:
        yield m
    finally:
        m.cleanup()


@pytest.fixture
def uploaded(dm, tmp_path: Path) -> tuple[Path, str]:  # type: ignore[no-untyped-def]
    src = make_source(tmp_path / "src")
    assert dm("repo", "create", "--repo", "r").code == 0
    up = dm("bundle", "upload", "--repo", "r", "--path", src, "--message", "fixture", "--label", "prod")
    assert up.code == 0, up
    return src, up.out.strip()


def _stat_lines(root: Path) -> list[str]:
    fmt = "%n|%F|%a|%Y|%s"
    out = sh(f"find . -mindepth 1 -exec stat -c '{fmt}' {{}} +", cwd=root)
    assert out.returncode == 0, out
    lines = []
    for line in out.stdout.splitlines():
        name, kind, mode, mtime, size = line.split("|")
        lines.append("|".join([name, kind, mode, mtime, "" if kind == "directory" else size]))
    return sorted(lines)


def test_read_only_mount_serves_the_bundle_exactly(dm, uploaded, mounts: Mounts) -> None:  # type: ignore[no-untyped-def]
    src, _ = uploaded
    mnt = mounts.point()
    r = cli("bundle", "mount", "--repo", "r", "--label", "prod", "--mount", mnt, "--daemonize")
    assert r.returncode == 0, r
    assert os.path.ismount(mnt)
    pid = int(re.search(r"pid (\d+)", r.stderr).group(1))  # type: ignore[union-attr]

    # every file byte-identical (cmp, cat), the same names (find), modes/mtimes/sizes (stat, ls)
    files = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    for rel in files:
        assert subprocess.run(["cmp", src / rel, mnt / rel]).returncode == 0, rel
    assert sh("cat 'ünïcødé/日本語.txt'", cwd=mnt).stdout == "ünïcødé\n"
    assert sh("find . | sort", cwd=mnt).stdout == sh("find . | sort", cwd=src).stdout
    assert sh("find . -type f | wc -l", cwd=mnt).stdout.strip() == str(len(files))
    assert _stat_lines(mnt) == _stat_lines(src)
    for rel in [*files, Path("link-to-text"), Path("deep/a")]:
        a, b = os.lstat(src / rel), os.lstat(mnt / rel)
        assert (a.st_mode, a.st_mtime_ns) == (b.st_mode, b.st_mtime_ns), rel
    ls = sh("ls -l", cwd=mnt).stdout
    assert re.search(r"-rwxr-xr-x .* run\.sh", ls) and re.search(r"-rw------- .* one\.bin", ls)
    assert "link-to-text -> text.csv" in ls
    assert os.readlink(mnt / "dirlink") == "deep/a" and (mnt / "dirlink/b/leaf.txt").read_bytes() == b"leaf\n"
    assert os.listdir(mnt / "empty-dir") == [] and (mnt / "empty.bin").read_bytes() == b""

    # python open() with seeks
    big = (src / "big.bin").read_bytes()
    with open(mnt / "big.bin", "rb", buffering=0) as f:
        for off, n in [(0, 10), (3_000_000, 500_000), (1 << 20, 1), (len(big) - 5, 100), (7, 2 << 20)]:
            f.seek(off)
            assert f.read(n) == big[off : off + n]
        assert os.pread(f.fileno(), 100, len(big)) == b""

    # every write fails with EROFS
    for cmd in [
        "touch one.bin",
        "echo x > new.txt",
        "echo x >> text.csv",
        "mkdir d",
        "rm one.bin",
        "mv one.bin two.bin",
        "chmod 777 one.bin",
        "ln -s a b",
        "rmdir empty-dir",
    ]:
        out = sh(cmd, cwd=mnt)
        assert out.returncode != 0 and "Read-only file system" in out.stderr, (cmd, out)
    with pytest.raises(OSError) as ei, open(mnt / "one.bin", "r+b"):
        pass
    assert ei.value.errno == errno.EROFS

    # mounting again on it is refused before anything happens
    again = dm("bundle", "mount", "--repo", "r", "--mount", mnt)
    assert again.code == 1 and "already a mount point" in again.err

    assert subprocess.run(["fusermount3", "-u", mnt]).returncode == 0
    assert not os.path.ismount(mnt)
    wait_for(lambda: gone(pid))


def test_bad_input_is_refused_before_mounting(dm, uploaded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    empty = tmp_path / "empty"
    empty.mkdir()
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    cases = [
        (["--label", "prod", "--mount", tmp_path / "missing"], 1, "does not exist"),
        (["--label", "prod", "--mount", full], 1, "not empty"),
        (["--label", "prod", "--mount", full / "x"], 1, "not a directory"),
        (["--label", "nope", "--mount", empty], 2, "nope"),
        (["--bundle", "abcdef0123", "--mount", empty], 2, ""),
    ]
    for args, code, text in cases:
        r = dm("bundle", "mount", "--repo", "r", *args)
        assert r.code == code and text in r.err, (args, r)
    assert dm("bundle", "mount", "--repo", "nope", "--mount", empty).code == 2
    r = dm(
        "bundle", "mount", "new", "--repo", "r", "--mount", empty, "--message", "m", "--from-label", "nope"
    )
    assert r.code == 2, r
    assert dm("bundle", "mount", "new", "--repo", "nope", "--mount", empty, "--message", "m").code == 2
    assert not os.path.ismount(empty)


def test_ctrl_c_unmounts_and_a_killed_mount_is_recoverable(dm, uploaded, mounts: Mounts) -> None:  # type: ignore[no-untyped-def]
    mnt = mounts.point()
    proc = mounts.foreground("bundle", "mount", "--repo", "r", "--label", "prod", "--mount", mnt, mnt=mnt)
    assert (mnt / "one.bin").read_bytes() == b"x"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    assert not os.path.ismount(mnt)

    proc = mounts.foreground("bundle", "mount", "--repo", "r", "--mount", mnt, mnt=mnt)
    proc.kill()
    proc.wait(timeout=30)
    r = dm("bundle", "mount", "--repo", "r", "--mount", mnt)
    assert r.code == 1 and "fusermount3 -u" in r.err, r
    assert subprocess.run(["fusermount3", "-u", mnt]).returncode == 0
    assert not os.path.ismount(mnt) and os.listdir(mnt) == []


EDITS = """
cp {outside}/extra.bin {d}/copy.bin
cp {d}/text.csv {d}/deep/copied.csv
mv {d}/run.sh {d}/ünïcødé/run2.sh
mv {d}/deep/a {d}/moved
rm {d}/empty.bin
rm -r '{d}/spaces in name'
echo appended >> {d}/text.csv
echo new > {d}/new.txt
mkdir -p {d}/newdir/sub
printf abc > {d}/newdir/sub/f
ln -s ../text.csv {d}/newdir/ln
chmod 600 {d}/new.txt
truncate -s 10 {d}/big.bin
rmdir {d}/empty-dir
mv -n {d}/one.bin {d}/new.txt || true
"""


def test_mutable_mount_commits_what_was_written(dm, uploaded, mounts: Mounts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src, base_id = uploaded
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "extra.bin").write_bytes(rand(2_500_000, 9))
    local = tmp_path / "local"
    shutil.copytree(src, local, symlinks=True)
    mnt = mounts.point()
    proc = mounts.foreground(
        "bundle", "mount", "new", "--repo", "r", "--mount", mnt, "--message", "edited",
        "--from-label", "prod", "--label", "next", mnt=mnt,
    )  # fmt: skip
    for d in (mnt, local):
        out = sh("set -e\n" + EDITS.format(d=d, outside=outside))
        assert out.returncode == 0, (d, out)
    assert sh("cat text.csv | tail -1", cwd=mnt).stdout == "appended\n"
    assert subprocess.run(["fusermount3", "-u", mnt]).returncode == 0
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    new_id = out.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", new_id), (out, err)

    got = dm("bundle", "get", "--repo", "r", "--label", "next", "--json")
    assert got.code == 0 and new_id in got.out and base_id in got.out  # parents: [base]
    assert (
        dm("bundle", "download", "--repo", "r", "--label", "next", "--destination", tmp_path / "dl").code == 0
    )

    def no_mtimes(files: dict[str, object]) -> dict[str, object]:
        return {k: v[:2] if isinstance(v, tuple) and isinstance(v[0], bytes) else v for k, v in files.items()}

    downloaded, expected = tree_files(tmp_path / "dl"), tree_files(local)
    assert no_mtimes(downloaded) == no_mtimes(expected)
    assert downloaded["moved/b/leaf.txt"] == expected["moved/b/leaf.txt"]  # untouched: mtime kept
    assert not list((Path(os.environ["DATAMON_HOME"]) / "staging").iterdir())


def test_mutable_mount_without_changes_makes_no_bundle(dm, uploaded, mounts: Mounts) -> None:  # type: ignore[no-untyped-def]
    mnt = mounts.point()
    proc = mounts.foreground(
        "bundle", "mount", "new", "--repo", "r", "--mount", mnt, "--message", "m", "--from-label", "prod",
        mnt=mnt,
    )  # fmt: skip
    assert (
        sh("ls -lR . >/dev/null && cat text.csv >/dev/null && find . -type f | wc -l", cwd=mnt).returncode
        == 0
    )
    assert subprocess.run(["fusermount3", "-u", mnt]).returncode == 0
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out == "" and "nothing changed" in err, err
    assert len(dm("bundle", "list", "--repo", "r", "--format", "{id}").out.split()) == 1

    # daemonized, from empty, ended by Ctrl-C (SIGINT): it commits, and the id lands in the log
    r = cli("bundle", "mount", "new", "--repo", "r", "--mount", mnt, "--message", "m2", "--daemonize")
    assert r.returncode == 0, r
    pid = int(re.search(r"pid (\d+)", r.stderr).group(1))  # type: ignore[union-attr]
    log = Path(re.search(r"written to (\S+)", r.stderr).group(1))  # type: ignore[union-attr]
    (mnt / "hello.txt").write_text("hi\n")
    os.kill(pid, signal.SIGINT)
    wait_for(lambda: gone(pid))
    assert not os.path.ismount(mnt)
    ids = dm("bundle", "list", "--repo", "r", "--format", "{id}").out.split()
    assert len(ids) == 2 and ids[0] in log.read_text()


def test_a_corrupt_chunk_reads_as_eio_never_wrong_bytes(dm, tmp_path: Path, mounts: Mounts) -> None:  # type: ignore[no-untyped-def]
    import datamon
    from datamon.cas.pack import pack_blob_name

    src = tmp_path / "src"
    src.mkdir()
    (src / "rand.bin").write_bytes(rand(3_000_000, 4))
    (src / "ok.txt").write_text("fine\n")
    assert dm("repo", "create", "--repo", "c").code == 0
    assert dm("bundle", "upload", "--repo", "c", "--path", src, "--message", "m").code == 0
    with datamon.connect() as ctx:
        e = next(e for e in ctx.entries("c") if e.path == "rand.bin").entry
        chunk = ctx.cas.file_chunks(e.key, e.size)[-1][0]
        loc = ctx.cas.reader.locate([chunk])[chunk]
    pack = Path(os.environ["DATAMON_HOME"]) / "blobs" / pack_blob_name(loc.pack)
    data = bytearray(pack.read_bytes())
    data[loc.offset + loc.length // 2] ^= 0x01
    pack.write_bytes(bytes(data))

    mnt = mounts.point()
    r = cli("bundle", "mount", "--repo", "c", "--mount", mnt, "--daemonize")
    assert r.returncode == 0, r
    log = Path(re.search(r"log (\S+)\)", r.stderr).group(1))  # type: ignore[union-attr]
    out = sh("cat rand.bin > /dev/null", cwd=mnt)
    assert out.returncode != 0 and "Input/output error" in out.stderr, out
    with open(mnt / "rand.bin", "rb") as f, pytest.raises(OSError) as ei:
        f.read()
    assert ei.value.errno == errno.EIO
    assert (mnt / "ok.txt").read_text() == "fine\n"
    assert chunk.hex() in log.read_text()
