"""Go templates in ``--format``, for scripts written against the Go Datamon.

Datamon printed objects through Go's ``text/template`` (``--format '{{.ID}} , {{.Timestamp}}'``).
datamon renders the part of that language those scripts use: fields (``{{.ID}}``, ``{{.Contributor.Name}}``),
``{{.}}``, ``if``/``else``/``with``/``range``/``end``, ``not``, ``printf`` with ``%v %s %d %q %#v``,
comments and the ``{{-``/``-}}`` whitespace trims. Datamon's field names map onto datamon's own row
fields (``GO_FIELDS``); every datamon field is also reachable in CamelCase (``tree`` → ``{{.Tree}}``).
A template that names a field the row does not have, or uses anything else of Go's language, is a
``UsageError`` (exit 1) naming it: a template is never printed literally.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from datamon.errors import UsageError

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"|`[^`]*`|\(|\)|[^\s()]+)')
_HINT = "write Datamon fields like '{{.ID}} , {{.Timestamp}}' (docs/datamon.md lists them), or '{id}'"


def is_go_template(fmt: str) -> bool:
    """Whether ``fmt`` is a Go template (has a ``{{ … }}`` action) rather than a Python format string."""
    return _GO_START.search(fmt) is not None


# What may open a Go action: a field, variable, comment, string, or one of Go's keywords and
# functions (those datamon does not render are then refused by name, never printed as text).
_GO_START = re.compile(
    r"\{\{-?\s*(\.|\$|/\*|\"|`|(if|with|range|end|else|not|printf|print|println|len|index|and|or|eq|ne"
    r"|lt|le|gt|ge|html|js|urlquery|slice|call|template|define|block|break|continue)\b)"
)


def _error(fmt: str, what: str, hint: str = _HINT) -> UsageError:
    from datamon.cli.render import safe

    return UsageError(f"--format {safe(repr(fmt))}: {what}", hint)


# -- parsing -------------------------------------------------------------------------------------
@dataclass
class _Node:
    kind: str  # "text", "expr", "if", "with", "range"
    text: str = ""
    expr: list[str] = field(default_factory=list)
    body: list[_Node] = field(default_factory=list)
    orelse: list[_Node] = field(default_factory=list)


def parse(fmt: str) -> list[_Node]:
    """The template as a node tree; ``UsageError`` for syntax datamon does not render."""
    root: list[_Node] = []
    stack: list[tuple[_Node | None, list[_Node]]] = [(None, root)]
    pos = 0
    pending_trim = False
    for m in _ACTION.finditer(fmt):
        text = fmt[pos : m.start()]
        if "{{" in text:
            raise _error(fmt, "an action {{ without its closing }}")
        if pending_trim:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        if text:
            stack[-1][1].append(_Node("text", text=text))
        pos, pending_trim = m.end(), bool(m.group(3))
        body = m.group(2).strip()
        if body.startswith("/*"):
            if not body.endswith("*/"):
                raise _error(fmt, "an unterminated comment")
            continue
        words = _tokens(fmt, body)
        if not words:
            raise _error(fmt, "an empty action {{}}")
        head = words[0]
        if head in ("if", "with", "range"):
            if len(words) < 2:
                raise _error(fmt, f"{{{{{head}}}}} needs a value")
            node = _Node(head, expr=words[1:])
            stack[-1][1].append(node)
            stack.append((node, node.body))
        elif head == "else":
            top = stack[-1][0]
            if top is None or len(words) > 1 or stack[-1][1] is top.orelse:
                raise _error(fmt, "an {{else}} outside if/with/range (or an 'else if', not supported)")
            stack[-1] = (top, top.orelse)
        elif head == "end":
            if len(stack) == 1 or len(words) > 1:
                raise _error(fmt, "an {{end}} without if/with/range")
            stack.pop()
        elif "|" in words or ":=" in words or "=" in words:
            raise _error(fmt, "pipes and variables are not supported")
        elif head in ("define", "template", "block", "break", "continue", "$"):
            raise _error(fmt, f"{{{{{head} …}}}} is not supported")
        else:
            stack[-1][1].append(_Node("expr", expr=words))
    if len(stack) > 1:
        raise _error(fmt, f"{{{{{stack[-1][0].kind if stack[-1][0] else ''}}}}} has no {{{{end}}}}")
    text = fmt[pos:]
    if "{{" in text:
        raise _error(fmt, "an action {{ without its closing }}")
    if pending_trim:
        text = text.lstrip()
    if text:
        root.append(_Node("text", text=text))
    return root


def _tokens(fmt: str, body: str) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(body):
        m = _TOKEN.match(body, i)
        if not m:
            break
        out.append(m.group(1))
        i = m.end()
        if not body[i:].strip():
            break
    if "(" in out or ")" in out:
        raise _error(fmt, "parenthesised pipelines are not supported")
    return out


# -- the Go view of a datamon row -----------------------------------------------------------------
# Datamon's field name → datamon's row field (the rest: CamelCase of datamon's own names).
GO_FIELDS = {
    "ID": "id",
    "BundleID": "bundle",
    "Timestamp": "time",
    "Message": "message",
    "Name": "name",
    "NameWithPath": "path",
    "Hash": "key",
    "Size": "size",
    "Description": "description",
    "Parents": "parents",
    "Labels": "labels",
    "Label": "label",
    "Repo": "repo",
    "RepoName": "repo",
    "BundleEntriesFileCount": "files",
    "Type": "op",
    "Version": "version",
}


def _camel(key: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in key.split("_"))


def _human(n: object) -> str:
    if not isinstance(n, int):
        return ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _person(text: object) -> dict[str, Any]:
    """``"Name <email>"`` → ``{"Name": …, "Email": …}`` (Datamon's Contributor)."""
    s = str(text or "")
    m = re.fullmatch(r"(.*?)\s*<([^<>]*)>", s)
    return {"Name": m.group(1), "Email": m.group(2)} if m else {"Name": s, "Email": ""}


def go_view(row: dict[str, Any]) -> dict[str, Any]:
    """The fields a Datamon template sees for ``row``."""
    mapped = set(GO_FIELDS.values())
    view: dict[str, Any] = {_camel(k): v for k, v in row.items() if k not in mapped}
    for go, ours in GO_FIELDS.items():
        if ours in row:
            view[go] = row[ours]
    if "path" in row:  # files and diff rows: Datamon's Name is the path
        view["Name"] = row["path"]
    if "contributor" in row:
        view["Contributor"] = _person(row["contributor"])
    elif "creator" in row:
        view["Contributor"] = {"Name": row.get("creator") or "", "Email": row.get("creator_email") or ""}
    if isinstance(row.get("size"), int):
        view["HumanSize"] = _human(row["size"])
    if "op" in row:  # diff: Datamon's Existing is the A side / the directory, Additional the B side
        for go, side in (("Existing", "old"), ("Additional", "new")):
            if row.get(f"{side}_key") is not None or row.get(f"{side}_size") is not None:
                view[go] = {"Size": row.get(f"{side}_size"), "Hash": row.get(f"{side}_key")}
            else:
                view[go] = None
    return view


# -- rendering -----------------------------------------------------------------------------------
def render(fmt: str, nodes: list[_Node], row: dict[str, Any]) -> str:
    out: list[str] = []
    _run(fmt, nodes, go_view(row), out)
    return "".join(out)


def _run(fmt: str, nodes: list[_Node], dot: Any, out: list[str]) -> None:
    for n in nodes:
        if n.kind == "text":
            out.append(n.text)
        elif n.kind == "expr":
            out.append(_show(_eval(fmt, n.expr, dot)))
        else:
            value = _eval(fmt, n.expr, dot)
            if n.kind == "range":
                items = list(value.values() if isinstance(value, dict) else value or [])
                for item in items:
                    _run(fmt, n.body, item, out)
                if not items:
                    _run(fmt, n.orelse, dot, out)
            elif _truthy(value):
                _run(fmt, n.body, value if n.kind == "with" else dot, out)
            else:
                _run(fmt, n.orelse, dot, out)


def _truthy(v: Any) -> bool:
    return v is not None and v is not False and v != 0 and v != "" and v != [] and v != {}


def _show(v: Any) -> str:
    if v is None:
        return "<no value>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + " ".join(_show(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + " ".join(_show(x) for x in v.values()) + "}"
    return str(v)


def _eval(fmt: str, words: list[str], dot: Any) -> Any:
    head = words[0]
    if head == "not":
        if len(words) != 2:
            raise _error(fmt, "'not' takes one value")
        return not _truthy(_arg(fmt, words[1], dot))
    if head == "printf":
        if len(words) < 2 or not words[1].startswith(('"', "`")):
            raise _error(fmt, "printf needs a quoted format first")
        return _printf(fmt, _arg(fmt, words[1], dot), [_arg(fmt, w, dot) for w in words[2:]])
    if len(words) != 1:
        raise _error(fmt, f"{' '.join(words)!r} is not a field; unknown function {head!r}")
    return _arg(fmt, head, dot)


def _arg(fmt: str, word: str, dot: Any) -> Any:
    if word.startswith('"'):
        return json.loads(word)
    if word.startswith("`"):
        return word[1:-1]
    if word == ".":
        return dot
    if not word.startswith("."):
        raise _error(fmt, f"{word!r} is not a field (fields start with a dot, like .ID)")
    value = dot
    for part in word[1:].split("."):
        if not isinstance(value, dict) or part not in value:
            have = ", ".join(sorted(value)) if isinstance(value, dict) else "none"
            raise _error(fmt, f"there is no field {part}", f"fields here: {have}")
        value = value[part]
    return value


_VERB = re.compile(r"%(#?)([vsdqx%])")


def _printf(fmt: str, pattern: str, args: list[Any]) -> str:
    it = iter(args)

    def one(m: re.Match[str]) -> str:
        if m.group(2) == "%":
            return "%"
        try:
            v = next(it)
        except StopIteration:
            return f"%!{m.group(2)}(MISSING)"
        if m.group(1):
            return json.dumps(v, default=str)
        if m.group(2) == "q":
            return json.dumps(str(v))
        if m.group(2) == "x":
            return (
                v.hex()
                if isinstance(v, bytes)
                else format(v, "x")
                if isinstance(v, int)
                else str(v).encode().hex()
            )
        return _show(v)

    text = _VERB.sub(one, pattern)
    if "%" in _VERB.sub("", pattern):
        raise _error(fmt, f"printf verb in {pattern!r} is not supported (use %v %s %d %q %x %#v)")
    return text
