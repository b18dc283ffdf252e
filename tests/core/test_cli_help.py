"""Every command has help text with an example; the command shape follows the contract."""

from __future__ import annotations

import subprocess
import sys
import time

import click

from datamon.cli import cli


def _walk(group: click.Group, prefix: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    for name, cmd in group.commands.items():
        yield (*prefix, name), cmd
        if isinstance(cmd, click.Group):
            yield from _walk(cmd, (*prefix, name))


def test_every_command_has_help_with_example(dm) -> None:  # type: ignore[no-untyped-def]
    seen = []
    for path, cmd in _walk(cli):
        r = dm(*path, "--help")
        assert r.code == 0, (path, r)
        assert cmd.help, f"{' '.join(path)} has no help"
        is_plain_group = isinstance(cmd, click.Group) and not cmd.invoke_without_command
        if not is_plain_group:
            assert "Example" in r.out, f"`datamon {' '.join(path)} --help` shows no example"
        seen.append(" ".join(path))
    for required in [
        "repo create",
        "repo list",
        "repo get",
        "repo delete",
        "bundle upload",
        "bundle download",
        "bundle download file",
        "bundle list",
        "bundle list files",
        "bundle get",
        "bundle diff",
        "bundle update",
        "label set",
        "label get",
        "label list",
        "label history",
        "context create",
        "context list",
        "context get",
        "config set",
    ]:
        assert required in seen


def test_context_and_config_commands(dm, tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = dm(
        "context",
        "create",
        "other",
        "--blob",
        (tmp_path / "b").as_uri(),
        "--meta",
        f"sqlite:///{tmp_path}/o.db",
    )
    assert r.code == 0, r
    assert dm("context", "create", "other", "--blob", "memory://x", "--meta", "sqlite://").code == 3
    names = dm("context", "list", "--format", "{name}").out.split()
    assert names == ["default", "other"]
    assert dm("--context", "other", "repo", "create", "--repo", "elsewhere").code == 0
    assert dm("repo", "list", "--context", "other", "--format", "{name}").out.split() == ["elsewhere"]
    assert dm("repo", "list", "--format", "{name}").out.split() == []
    assert dm("config", "set", "contributor.name", "Ada Lovelace").code == 0
    assert dm("config", "set", "nope.key", "x").code == 1
    src = tmp_path / "s"
    src.mkdir()
    (src / "f").write_text("x")
    dm("repo", "create", "--repo", "r")
    dm("bundle", "upload", "--repo", "r", "--path", src, "--message", "m")
    assert dm("bundle", "get", "--repo", "r", "--format", "{contributor}").out.startswith("Ada Lovelace")


def test_label_get_starts_fast(dm, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Not a timing test: checks that the quick commands do not import the heavy modules."""
    src = tmp_path / "s"
    src.mkdir()
    (src / "f").write_text("x")
    dm("repo", "create", "--repo", "r")
    dm("bundle", "upload", "--repo", "r", "--path", src, "--message", "m", "--label", "p")
    code = (
        "import sys; from datamon.cli import main\n"
        "try:\n    main(['label', 'get', '--repo', 'r', '--label', 'p'])\nexcept SystemExit: pass\n"
        "mods = ('rich', 'alembic', 'zstandard', 'fsspec', 'pyfastcdc', 'sqlalchemy.orm')\n"
        "heavy = [m for m in mods if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    _ = time.perf_counter() - t
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_context_refuses_passwords_and_masks_them(dm, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    r = dm(
        "context", "create", "team", "--blob", "memory://x", "--meta", "postgresql+psycopg://u:s3cret@db/dm"
    )
    assert r.code == 1 and "password" in r.err and "s3cret" not in r.err + r.out
    assert "team" not in dm("context", "list", "--format", "{name}").out
    monkeypatch.setenv("DATAMON_META_URL", "postgresql+psycopg://u:s3cret@db/dm")
    shown = dm("context", "get", "--json").out
    assert "s3cret" not in shown and "u:***@db" in shown
