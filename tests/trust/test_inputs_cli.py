"""Hostile input at the command line, in the config and in the stores: one stderr line, the
documented exit code, never a traceback (docs/security.md)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from datamon import names


def one_line(r, code: int) -> None:  # type: ignore[no-untyped-def]
    assert r.code == code, r
    assert "Traceback" not in r.err, r
    assert len(r.err.strip().splitlines()) == 1, r


@pytest.fixture
def repo(dm, tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    assert dm("repo", "create", "--repo", "r").code == 0
    assert dm("bundle", "upload", "--repo", "r", "--path", src, "--message", "m", "--label", "prod").code == 0
    return "r"


# --- names ------------------------------------------------------------------------------------

GO_VALID = [
    "label1",
    "label1-",
    "label1_1-1",
    "prod",
    "v1",
    "模型",
    "données",
    "a\u2010b",
    "x\u203fy",
    "-x",
    "_",
]
EXTRA_VALID = ["v1.2", "a.b.c", "release-2024.01"]
INVALID = [
    "",
    "a/b",
    "a\nb",
    "a\x1bb",
    "a b",
    ".",
    "..",
    ".hidden",
    "a..b",
    "label{",
    "a@b",
    "x" * 256,
    "a\u202eb",
]


@pytest.mark.parametrize("name", GO_VALID + EXTRA_VALID)
def test_names_go_datamon_accepts_stay_valid(name: str) -> None:
    assert names.is_valid(name), name


@pytest.mark.parametrize("name", INVALID)
def test_invalid_names_are_refused(name: str) -> None:
    assert not names.is_valid(name)


@pytest.mark.parametrize("name", INVALID)
def test_invalid_names_exit_1_at_create_and_set(dm, repo: str, name: str) -> None:  # type: ignore[no-untyped-def]
    one_line(dm("repo", "create", "--repo", name), 1)
    one_line(dm("label", "set", "--repo", repo, "--label", name), 1)


@pytest.mark.parametrize("name", ["", "a/b", "..", "a\nb"])
def test_empty_or_invalid_label_never_means_latest(dm, repo: str, name: str) -> None:  # type: ignore[no-untyped-def]
    for cmd in (["bundle", "get"], ["bundle", "list", "files"], ["label", "get"]):
        one_line(dm(*cmd, "--repo", repo, "--label", name), 1)


def test_python_api_refuses_bad_names(repo: str) -> None:
    from datamon.api.context import connect
    from datamon.errors import UsageError

    with connect() as ctx:
        for bad in ("", "a/b", "a\x00b"):
            with pytest.raises(UsageError):
                ctx.create_repo(bad)
            with pytest.raises(UsageError):
                ctx.set_label(repo, bad, ctx.bundle(repo).id)
            with pytest.raises(UsageError):
                ctx.bundle(repo, label=bad)


def test_stored_bad_names_can_be_listed_and_deleted(dm, repo: str, datamon_home: Path) -> None:  # type: ignore[no-untyped-def]
    db = sqlite3.connect(datamon_home / "meta.db")
    bid = db.execute("SELECT id FROM bundles").fetchone()[0]
    db.execute("INSERT INTO repos (name, description, created_ns) VALUES ('old/repo\x1b[2J', '', 1)")
    db.execute(
        "INSERT INTO labels (repo_id, name, bundle_id, updated_ns, contributor) "
        "SELECT id, 'bad\nlabel', ?, 1, '' FROM repos WHERE name = 'r'",
        (bid,),
    )
    db.commit()
    db.close()
    listed = dm("repo", "list")
    assert listed.code == 0 and "\x1b" not in listed.out and "old/repo\\x1b[2J" in listed.out
    labels = dm("label", "list", "--repo", repo)
    assert labels.code == 0 and "bad\\nlabel" in labels.out
    assert (
        json.loads(dm("label", "list", "--repo", repo, "--json").out.splitlines()[0])["label"] == "bad\nlabel"
    )
    assert dm("label", "delete", "--repo", repo, "--label", "bad\nlabel").code == 0
    assert "bad" not in dm("label", "list", "--repo", repo).out
    assert dm("repo", "delete", "--repo", "old/repo\x1b[2J", "--force-yes").code == 0


def test_message_and_contributor_are_escaped_but_json_is_exact(dm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "s"
    src.mkdir()
    (src / "f").write_text("x")
    dm("repo", "create", "--repo", "q")
    evil = "fix\x1b[31m red\u202e\nnext"
    assert dm("bundle", "upload", "--repo", "q", "--path", src, "--message", evil).code == 0
    for args in (["bundle", "list", "--repo", "q"], ["bundle", "get", "--repo", "q"]):
        out = dm(*args).out
        assert "\x1b" not in out and "\u202e" not in out and "\\x1b[31m" in out
        assert "\t" in out or ": " in out  # the layout's own tabs are kept
    row = json.loads(dm("bundle", "list", "--repo", "q", "--json").out)
    assert row["message"] == evil


# --- non-UTF-8 argv (subprocess: bytes arguments) ---------------------------------------------


def run_bytes(home: Path, *args: str | bytes) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, DATAMON_HOME=str(home))
    return subprocess.run(
        [sys.executable, "-m", "datamon.cli", *args], capture_output=True, env=env, timeout=120
    )


@pytest.mark.parametrize(
    "args",
    [
        ["repo", "create", "--repo", b"caf\xe9"],
        ["bundle", "get", "--repo", "r", "--label", b"caf\xe9"],
        ["label", "set", "--repo", "r", "--label", b"caf\xe9"],
        ["bundle", "list", "--repo", b"caf\xe9"],
    ],
)
def test_non_utf8_arguments_are_one_line(tmp_path: Path, args: list[str | bytes]) -> None:
    r = run_bytes(tmp_path / "h", *args)
    err = r.stderr.decode()
    assert r.returncode == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_non_utf8_message_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "h"
    src = tmp_path / "s"
    src.mkdir()
    (src / "f").write_text("x")
    assert run_bytes(home, "repo", "create", "--repo", "r").returncode == 0
    r = run_bytes(home, "bundle", "upload", "--repo", "r", "--path", str(src), "--message", b"caf\xe9")
    assert r.returncode == 1 and b"UTF-8" in r.stderr and b"Traceback" not in r.stderr


# --- formats, regexes, durations, ranges, ids --------------------------------------------------

BAD_FORMATS = [
    "{id.x}",
    "{nope}",
    "{",
    "}",
    "{0}",
    "{}",
    "{id[0]}",
    "{id:{x}}",
    "{files:s}",
    "{labels:>5}",
    "{id!z}",
]


@pytest.mark.parametrize("fmt", BAD_FORMATS)
def test_bad_format_is_one_line_everywhere(dm, repo: str, fmt: str) -> None:  # type: ignore[no-untyped-def]
    for args in (
        ["repo", "list"],
        ["repo", "get", "--repo", repo],
        ["bundle", "list", "--repo", repo],
        ["bundle", "get", "--repo", repo],
        ["bundle", "list", "files", "--repo", repo],
        ["label", "list", "--repo", repo],
        ["label", "get", "--repo", repo, "--label", "prod"],
        ["label", "history", "--repo", repo],
        ["context", "list"],
        ["context", "get"],
    ):
        one_line(dm(*args, "--format", fmt), 1)


@pytest.mark.parametrize("regex", ["(", "[", "*", "a{2,1}", "(?P<x"])
def test_bad_name_filter(dm, repo: str, regex: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    one_line(dm("bundle", "list", "files", "--repo", repo, "--name-filter", regex), 1)
    one_line(
        dm("bundle", "download", "--repo", repo, "--destination", tmp_path / "d", "--name-filter", regex), 1
    )


@pytest.mark.parametrize("grace", ["1e400", "-1s", "abc", "99999999999d", "", "1" * 400 + "s", "nan", "inf"])
def test_bad_grace(dm, repo: str, grace: str) -> None:  # type: ignore[no-untyped-def]
    one_line(dm("gc", "--grace", grace), 1)


@pytest.mark.parametrize("rng", ["abcdef..", "..prod", "..", "prod", "a b..prod"])
def test_diff_needs_both_sides(dm, repo: str, rng: str) -> None:  # type: ignore[no-untyped-def]
    one_line(dm("bundle", "diff", "--repo", repo, rng), 1)


@pytest.mark.parametrize("expected", ["z" * 64, "zz", "12345", "g" * 10])
def test_bad_expected_is_exit_1(dm, repo: str, expected: str) -> None:  # type: ignore[no-untyped-def]
    one_line(dm("label", "set", "--repo", repo, "--label", "prod", "--expected", expected), 1)


@pytest.mark.parametrize("bid", ["", "xyz123", "../../etc", "abc"])
def test_bad_bundle_ids(dm, repo: str, bid: str) -> None:  # type: ignore[no-untyped-def]
    one_line(dm("bundle", "get", "--repo", repo, "--bundle", bid), 1)


def test_download_interrupt_hint_names_update(dm, repo: str, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import datamon.api.download as download

    def boom(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "download", boom)
    r = dm("bundle", "download", "--repo", repo, "--label", "prod", "--destination", tmp_path / "d")
    assert r.code == 130 and "datamon bundle update --repo r --bundle " in r.err and "--destination" in r.err


def test_click_usage_errors_are_one_line(dm) -> None:  # type: ignore[no-untyped-def]
    one_line(dm("bundle", "get"), 1)
    one_line(dm("bundle", "get", "--nope"), 1)
    one_line(dm("label", "set", "--repo"), 1)


# --- config ---------------------------------------------------------------------------------


def test_config_sizes_and_levels(dm, repo: str, datamon_home: Path) -> None:  # type: ignore[no-untyped-def]
    assert dm("config", "set", "cache.max_bytes", "1G").code == 0
    assert dm("config", "set", "cache.max_bytes", "512M").code == 0
    assert dm("repo", "list").code == 0
    for key, value in (
        ("cache.max_bytes", "banana"),
        ("cache.max_bytes", "0"),
        ("cache.max_bytes", "99999999999999999999999P"),
        ("upload.compression_level", "99"),
        ("upload.compression_level", "0"),
        ("upload.compression_level", "x"),
        ("upload.concurrency", "0"),
        ("contributor.name", "a\nb"),
    ):
        one_line(dm("config", "set", key, value), 1)
    one_line(dm("config", "set", "default_context", "nope"), 2)
    assert dm("repo", "list").code == 0  # nothing bad was stored


@pytest.mark.parametrize(
    "text",
    [
        "cache = 5\n",
        '[cache]\nmax_bytes = "zz"\n',
        "[cache]\nmax_bytes = -1\n",
        "[upload]\ncompression_level = 999\n",
        '[upload]\ncompression_level = "fast"\n',
        "contexts = 3\n",
        "default_context = 3\n",
        'default_context = "t"\n[contexts.t]\nmeta = "sqlite://"\n',
        'default_context = "t"\n[contexts.t]\nblob = "memory://x"\n',
        "[contributor]\nname = 3\n",
        "not toml = = =\n",
    ],
)
def test_bad_values_in_config_toml_are_one_line(dm, repo: str, datamon_home: Path, text: str) -> None:  # type: ignore[no-untyped-def]
    (datamon_home / "config.toml").write_text(text)
    r = dm("bundle", "upload", "--repo", repo, "--path", datamon_home, "--message", "m")
    one_line(r, 1)


def test_datamon_home_is_a_file(dm, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "afile"
    f.write_text("x")
    monkeypatch.setenv("DATAMON_HOME", str(f))
    for args in (["repo", "list"], ["context", "list"], ["config", "set", "contributor.name", "a"]):
        one_line(dm(*args), 1)


# --- damaged stores ----------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["random", "truncated", "empty-ish"])
def test_corrupt_meta_db(dm, repo: str, datamon_home: Path, damage: str) -> None:  # type: ignore[no-untyped-def]
    db = datamon_home / "meta.db"
    raw = db.read_bytes()
    for extra in ("-wal", "-shm"):
        Path(f"{db}{extra}").unlink(missing_ok=True)
    db.write_bytes(
        {"random": os.urandom(8192), "truncated": raw[: len(raw) // 2], "empty-ish": raw[:100]}[damage]
    )
    for args in (
        ["repo", "list"],
        ["bundle", "get", "--repo", repo],
        ["label", "get", "--repo", repo, "--label", "prod"],
    ):
        r = dm(*args)
        assert r.code in (1, 4), r
        one_line(r, r.code)


@pytest.mark.parametrize(
    "chunker",
    [
        {"min_size": 0, "avg_size": 0, "max_size": 0},
        {"min_size": -1, "avg_size": 1024, "max_size": 4096},
        {"min_size": 4096, "avg_size": 2048, "max_size": 1024},
        {"min_size": 1 << 40, "avg_size": 1 << 41, "max_size": 1 << 42},
        {"min_size": "a", "avg_size": 1024, "max_size": 4096},
        {"min_size": 1.5, "avg_size": 1024, "max_size": 4096},
        {"min_size": True, "avg_size": 1024, "max_size": 4096},
        {"avg_size": 1024},
        [1, 2, 3],
        None,
    ],
)
def test_bad_chunker_settings(dm, repo: str, datamon_home: Path, chunker: object) -> None:  # type: ignore[no-untyped-def]
    (datamon_home / "blobs" / "datamon-store.json").write_text(json.dumps({"format": 1, "chunker": chunker}))
    one_line(dm("bundle", "list", "files", "--repo", repo), 1)


@pytest.mark.parametrize(
    "raw", [b"[[[[" * 50000, b'{"format":1e400,"chunker":{}}', b"\xff\xfe", b"[]", b"null"]
)
def test_unreadable_store_settings(dm, repo: str, datamon_home: Path, raw: bytes) -> None:  # type: ignore[no-untyped-def]
    (datamon_home / "blobs" / "datamon-store.json").write_bytes(raw)
    one_line(dm("bundle", "list", "files", "--repo", repo), 1)


@pytest.mark.parametrize(
    "column, value",
    [
        ("message", "evil"),
        ("contributor_name", "mallory"),
        ("created_ns", 1),
        ("file_count", 99),
        ("record", b"{}"),
    ],
)
def test_edited_bundle_rows_are_exit_4(dm, repo: str, datamon_home: Path, column: str, value: object) -> None:  # type: ignore[no-untyped-def]
    db = sqlite3.connect(datamon_home / "meta.db")
    bid = db.execute("SELECT id FROM bundles").fetchone()[0]
    db.execute(f"UPDATE bundles SET {column} = ?", (value,))
    db.commit()
    db.close()
    for args in (["bundle", "get", "--repo", repo], ["bundle", "get", "--repo", repo, "--label", "prod"]):
        r = dm(*args)
        one_line(r, 4)
        assert bid in r.err
    listed = dm("bundle", "list", "--repo", repo)
    one_line(listed, 4)
    assert bid in listed.err and listed.out == ""


def test_bundle_list_prints_good_records_then_exits_4(
    dm, repo: str, datamon_home: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "s2"
    src.mkdir()
    (src / "g").write_text("y")
    good = dm("bundle", "upload", "--repo", repo, "--path", src, "--message", "good").out.strip()
    db = sqlite3.connect(datamon_home / "meta.db")
    db.execute("UPDATE bundles SET message = 'edited' WHERE id != ?", (good,))
    db.commit()
    db.close()
    r = dm("bundle", "list", "--repo", repo, "--format", "{id}")
    one_line(r, 4)
    assert r.out.split() == [good]
