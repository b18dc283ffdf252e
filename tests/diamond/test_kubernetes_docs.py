"""docs/kubernetes.md: every manifest parses, and every datamon command line in it is accepted by
the CLI (``--help`` on the exact argv reaches the right command; a full parse of the options, with
Kubernetes' ``$(VAR)`` expansions filled in, finds no unknown or missing option)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "kubernetes.md"
SAMPLE_ENV = {"JOB_COMPLETION_INDEX": "3", "POD_NAME": "mnist-nightly-splits-3-abcde"}


def manifests() -> list[dict[str, Any]]:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks, "no yaml blocks"
    docs = [d for b in blocks for d in yaml.safe_load_all(b) if d]
    assert all("apiVersion" in d and "kind" in d for d in docs)
    return docs


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] == "Pod":
        return doc["spec"]  # type: ignore[no-any-return]
    if doc["kind"] in ("Job", "Deployment", "StatefulSet", "DaemonSet"):
        return doc["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return None


def datamon_argvs() -> list[tuple[str, list[str], dict[str, str]]]:
    out = []
    for doc in manifests():
        spec = pod_spec(doc)
        if spec is None:
            continue
        for c in spec.get("initContainers", []) + spec["containers"]:
            cmd = list(c.get("command", [])) + list(c.get("args", []))
            if cmd and cmd[0] == "datamon":
                env = {e["name"]: e.get("value", "") for e in c.get("env", []) if "value" in e}
                out.append((f"{doc['metadata']['name']}/{c['name']}", cmd[1:], env))
    return out


def expand(argv: list[str], env: dict[str, str]) -> list[str]:
    values = {**SAMPLE_ENV, **env}
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: values[m.group(1)], a) for a in argv]


def full_parse(argv: list[str]) -> click.Command:
    """Parse ``argv`` down the command tree the way ``datamon`` does, without running anything."""
    from datamon.cli import cli

    ctx = cli.make_context("datamon", list(argv), resilient_parsing=False)
    cmd: click.Command = cli
    while isinstance(cmd, click.Group):
        args = [*ctx._protected_args, *ctx.args]  # type: ignore[attr-defined]
        if not args:
            break
        name, sub, rest = cmd.resolve_command(ctx, args)
        assert sub is not None, f"no command {name!r}"
        ctx = sub.make_context(name or "", rest, parent=ctx)
        cmd = sub
    return cmd


def test_the_manifests_cover_the_workflows() -> None:
    docs = manifests()
    kinds = [d["kind"] for d in docs]
    assert "Secret" in kinds and kinds.count("Job") >= 3 and kinds.count("Pod") >= 2
    indexed = [d for d in docs if d["kind"] == "Job" and d["spec"].get("completionMode") == "Indexed"]
    assert len(indexed) == 1
    argvs = [" ".join(a) for _, a, _ in datamon_argvs()]
    for needed in (
        "diamond initialize",
        "diamond split add",
        "diamond commit",
        "bundle download",
        "bundle mount",
    ):
        assert any(a.startswith(needed) for a in argvs), needed
    assert any("$(JOB_COMPLETION_INDEX)" in a for a in argvs)
    init = [c for d in docs if d["kind"] == "Pod" for c in d["spec"].get("initContainers", [])]
    assert init and init[0]["command"] == ["datamon"]


@pytest.mark.parametrize("where,argv,env", datamon_argvs(), ids=[w for w, _, _ in datamon_argvs()])
def test_every_datamon_command_line_is_accepted(
    where: str, argv: list[str], env: dict[str, str], dm, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    argv = expand(argv, env)
    helped = dm(*argv, "--help")
    assert helped.code == 0, (where, helped)
    words = [a for a in argv if not a.startswith("-")][:3]
    assert helped.out.startswith("Usage: datamon " + " ".join(words[:1])), helped.out[:200]
    # --files names a list mounted from a ConfigMap: give the parser a real file there
    for i, a in enumerate(argv[:-1]):
        if a == "--files":
            (tmp_path / "list.txt").write_text("a\n")
            argv[i + 1] = str(tmp_path / "list.txt")
    cmd = full_parse(argv)
    assert not isinstance(cmd, click.Group) or cmd.invoke_without_command, where


def test_the_dockerfile_installs_the_cli() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["datamon"]' in text
    assert ".[postgres,s3,gcs,fuse,dask]" in text and "fuse3" in text
