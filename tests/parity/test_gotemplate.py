"""Datamon's Go templates in --format: every documented field, Datamon's own default templates, and
templates datamon cannot render (exit 1 naming the field; the template is never printed)."""

from __future__ import annotations

import json

import pytest

from datamon.cli import gotemplate


@pytest.fixture
def repo(dm, tree_factory):  # type: ignore[no-untyped-def]
    data = tree_factory({"a.txt": "one", "d": {"b.txt": "two"}})
    assert dm("repo", "create", "--repo", "r", "--description", "demo").code == 0
    assert (
        dm("bundle", "upload", "--repo", "r", "--path", data, "--message", "first", "--label", "v1").code == 0
    )
    (data / "a.txt").write_text("one, edited")
    assert (
        dm("bundle", "upload", "--repo", "r", "--path", data, "--message", "second", "--label", "v2").code
        == 0
    )
    return data


def _json(dm, *args: str) -> list[dict]:  # type: ignore[no-untyped-def, type-arg]
    return [json.loads(x) for x in dm(*args, "--json").out.splitlines()]


def test_datamon_default_templates_render_like_datamon(dm, repo) -> None:  # type: ignore[no-untyped-def]
    bundles = _json(dm, "bundle", "list", "--repo", "r")
    out = dm("bundle", "list", "--repo", "r", "--format", "{{.ID}} , {{.Timestamp}} , {{.Message}}").out
    assert out.splitlines() == [f"{b['id']} , {b['time']} , {b['message']}" for b in bundles]

    labels = _json(dm, "label", "list", "--repo", "r")
    out = dm("label", "list", "--repo", "r", "--format", "{{.Name}} , {{.BundleID}} , {{.Timestamp}}").out
    assert out.splitlines() == [f"{x['name']} , {x['bundle']} , {x['time']}" for x in labels]

    tpl = "{{.Name}} , {{.Description}} , {{with .Contributor}}{{.Name}} , {{.Email}}{{end}} , {{.Timestamp}}"
    (r,) = _json(dm, "repo", "list")
    assert (
        dm("repo", "list", "--format", tpl).out.strip()
        == f"r , demo , Test User , test@example.com , {r['time']}"
    )

    files = _json(dm, "bundle", "list", "files", "--repo", "r", "--label", "v1")
    tpl = "name:{{.NameWithPath}}, size:{{.Size}}, hash:{{.Hash}}"
    out = dm("bundle", "list", "files", "--repo", "r", "--label", "v1", "--format", tpl).out
    assert out.splitlines() == [f"name:{f['path']}, size:{f['size']}, hash:{f['key']}" for f in files]

    (d,) = _json(dm, "bundle", "diff", "--repo", "r", "v1..v2")
    tpl = (
        "{{.Type}} , {{.Name}} , {{with .Additional}}{{.Size}} , {{.Hash}}{{end}}"
        " , {{with .Existing}}{{.Size}} , {{.Hash}}{{end}}"
    )
    out = dm("bundle", "diff", "--repo", "r", "v1..v2", "--format", tpl).out.strip()
    assert out == f"U , a.txt , 11 , {d['new_key']} , 3 , {d['old_key']}"


# Every field docs/datamon.md documents, per command, with the datamon JSON field it shows.
DOCUMENTED = {
    ("bundle", "list", "--repo", "r"): {
        "ID": "id", "Timestamp": "time", "Message": "message", "Parents": None, "Labels": None,
        "BundleEntriesFileCount": "files", "Size": "size", "HumanSize": None, "Repo": "repo",
        "RepoName": "repo", "Tree": "tree", "Contributor.Name": None, "Contributor.Email": None,
    },
    ("label", "list", "--repo", "r"): {
        "Name": "name", "BundleID": "bundle", "Timestamp": "time", "Repo": "repo", "ID": "id",
        "Contributor.Name": None,
    },
    ("repo", "list"): {
        "Name": "name", "Description": "description", "Timestamp": "time", "Bundles": "bundles",
        "Contributor.Name": "creator", "Contributor.Email": "creator_email",
    },
    ("bundle", "list", "files", "--repo", "r", "--label", "v1"): {
        "Name": "path", "NameWithPath": "path", "Hash": "key", "Size": "size", "Kind": "kind",
        "Mode": "mode", "Mtime": "mtime",
    },
    ("bundle", "diff", "--repo", "r", "v1..v2"): {
        "Type": "op", "Name": "path", "Additional.Size": "new_size", "Additional.Hash": "new_key",
        "Existing.Size": "old_size", "Existing.Hash": "old_key", "Size": "size",
    },
}  # fmt: skip


@pytest.mark.parametrize("cmd", list(DOCUMENTED), ids=lambda c: " ".join(c[:3]))
def test_every_documented_field_renders(dm, repo, cmd) -> None:  # type: ignore[no-untyped-def]
    rows = _json(dm, *cmd)
    for go, ours in DOCUMENTED[cmd].items():
        r = dm(*cmd, "--format", "{{." + go + "}}")
        assert r.code == 0, (go, r)
        lines = r.out.splitlines()
        assert len(lines) == len(rows) and all(line and line != "<no value>" for line in lines), (go, r)
        if ours is not None:
            assert lines == [str(row[ours]) for row in rows], go


def test_contributor_and_lists(dm, repo) -> None:  # type: ignore[no-untyped-def]
    b = _json(dm, "bundle", "list", "--repo", "r")[0]
    out = dm(
        "bundle", "list", "--repo", "r", "--format",
        "{{- .Message -}} : {{range .Parents}}[{{.}}]{{else}}root{{end}}"
        " {{if .Labels}}labelled{{end}} {{.Contributor.Email}}",
    ).out.splitlines()  # fmt: skip
    assert out[0] == f"second: [{b['parents'][0]}] labelled test@example.com"
    assert out[1] == "first: root labelled test@example.com"
    assert (
        dm(
            "bundle", "list", "--repo", "r", "--format", '{{printf "%s|%d|%q" .Message .Size .Message}}'
        ).out.splitlines()[1]
        == 'first|6|"first"'
    )
    explore = dm("bundle", "list", "--repo", "r", "--format", '{{ printf "%#v" . }}').out.splitlines()[0]
    assert json.loads(explore)["ID"] == b["id"]
    assert dm("bundle", "list", "--repo", "r", "--format", "{{/* a comment */}}{{.Message}}").out.split() == [
        "second",
        "first",
    ]


@pytest.mark.parametrize(
    ("tpl", "names"),
    [
        ("{{.Nope}}", "no field Nope"),
        ("{{.Contributor.Phone}}", "no field Phone"),
        ("{{.ID", None),  # not an action: a Python format string, refused as such
        ("{{if .ID}}open", "has no {{end}}"),
        ("{{end}}", "without if/with/range"),
        ("{{.ID | printf}}", "pipes and variables are not supported"),
        ("{{$x := .ID}}", "pipes and variables are not supported"),
        ('{{template "x"}}', "not supported"),
        ("{{len .Parents}}", "not a field"),
        ('{{printf "%5.2f" .Size}}', "not supported"),
    ],
)
def test_templates_datamon_cannot_render_exit_1_and_print_nothing(dm, repo, tpl, names) -> None:  # type: ignore[no-untyped-def]
    r = dm("bundle", "list", "--repo", "r", "--format", tpl)
    assert r.code == 1 and r.out == "", r
    line = r.err.strip()
    assert line.startswith("error: --format") and "\n" not in line
    if names:
        assert names in line


def test_hostile_values_are_escaped(dm, tree_factory) -> None:  # type: ignore[no-untyped-def]
    data = tree_factory({"x": "1"})
    assert dm("repo", "create", "--repo", "r").code == 0
    assert dm("bundle", "upload", "--repo", "r", "--path", data, "--message", "a\x1b[2Jb").code == 0
    out = dm("bundle", "list", "--repo", "r", "--format", "{{.Message}}").out
    assert "\x1b" not in out


def test_python_format_strings_are_not_go_templates() -> None:
    assert not gotemplate.is_go_template("{id}\t{time}")
    assert not gotemplate.is_go_template("{{literal}} {id}")
    assert gotemplate.is_go_template("{{.ID}}") and gotemplate.is_go_template("{{- if .X}}y{{end}}")
