"""Rendering results: human text, ``--json`` (one object per line) and ``--format``."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import click


def iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_ISO: dict[int, str] = {}


def iso_cached(ns: int) -> str:
    """``iso`` for listings of many entries, most of them written in the same few seconds."""
    sec, frac = divmod(ns, 1_000_000_000)
    if not 10_000 <= frac <= 999_990_000:
        return iso(ns)  # near a second's edge ``iso`` may round up: no shortcut
    text = _ISO.get(sec)
    if text is None:
        if len(_ISO) >= 4096:
            _ISO.clear()
        text = _ISO[sec] = iso(ns)
    return text


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(c: str) -> str:
    if c in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[c]
    o = ord(c)
    if 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8 (os.fsdecode's surrogateescape)
        return f"\\x{o - 0xDC00:02x}"
    if o <= 0xFF:
        return f"\\x{o:02x}"
    return f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}"


def safe(value: object) -> str:
    """``value`` as text fit for a terminal: every character that is not printable (control
    characters and escape sequences, bidi overrides, zero-width and other format characters,
    line and paragraph separators, bytes that were not UTF-8) is written as a Python-style
    escape (``\\n``, ``\\x1b``, ``\\u202e``, ``\\xe9`` for a non-UTF-8 byte), so a name, message
    or path read from a store can neither move the cursor, recolour the screen, nor fake a line.
    Printable text, including any language's letters, is shown as it is."""
    s = value if isinstance(value, str) else str(value)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else _escape_char(c) for c in s)


def _safe_value(v: object) -> object:
    if isinstance(v, str):
        return safe(v)
    if isinstance(v, list | tuple):
        return [_safe_value(x) for x in v]
    return v


def safe_row(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with every string (also in lists) passed through ``safe``."""
    return {k: _safe_value(v) for k, v in row.items()}


def _json_escape(c: str) -> str:
    o = ord(c)
    if o > 0xFFFF:
        o -= 0x10000
        return f"\\u{0xD800 + (o >> 10):04x}\\u{0xDC00 + (o & 0x3FF):04x}"
    return f"\\u{o:04x}"


def json_line(obj: object) -> str:
    """One JSON document on one line (no newline at the end). Readable Unicode stays as it is;
    what a terminal would act on (control, format and separator characters) and lone surrogates
    (non-UTF-8 file names) are written as ``\\uXXXX`` escapes, so the line is valid JSON, valid
    UTF-8, and safe to print."""
    text = json.dumps(obj, ensure_ascii=False, default=str)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _json_escape(c) for c in text)


def check_format(fmt: str) -> str:
    """``fmt`` if it is a usable ``--format`` template: plain ``{field}`` names (optionally with a
    conversion and a format spec), no positional, attribute or index fields. Else ``UsageError``."""
    import string

    from datamon.cli import gotemplate
    from datamon.errors import UsageError

    if gotemplate.is_go_template(fmt):
        _go_parsed(fmt)
        return fmt
    hint = "write fields like '{id}\\t{time}' (--json shows the field names); a literal brace is '{{' or '}}'"
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError as e:
        raise UsageError(f"--format {safe(repr(fmt))} is not a valid template: {e}", hint) from None
    for _literal, field, spec, _conv in parsed:
        if field is None:
            continue
        if not field.isidentifier():
            raise UsageError(
                f"--format {safe(repr(fmt))}: field {{{safe(field)}}} is not a plain field name", hint
            )
        if spec and ("{" in spec or "}" in spec):
            raise UsageError(f"--format {safe(repr(fmt))}: nested fields are not supported", hint)
    return fmt


@functools.lru_cache(maxsize=8)
def _go_parsed(fmt: str) -> Any:
    from datamon.cli import gotemplate

    return gotemplate.parse(fmt)


def _format_callback(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else check_format(value)


def output_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--format",
        "fmt",
        metavar="TEMPLATE",
        callback=_format_callback,
        help="Python format string per item, e.g. '{id}', or Datamon's Go template, e.g. '{{.ID}}'.",
    )(f)
    f = click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")(f)
    return f


def fill(fmt: str, row: dict[str, Any]) -> str:
    """One ``--format`` line for ``row`` (strings escaped by ``safe``); ``UsageError`` if it cannot
    be filled (unknown field, a spec that does not fit the value). Datamon's Go templates
    (``{{.ID}}``) are rendered by ``datamon.cli.gotemplate``."""
    from datamon.cli import gotemplate

    if gotemplate.is_go_template(fmt):
        return gotemplate.render(fmt, _go_parsed(fmt), safe_row(row))
    check_format(fmt)
    try:
        return fmt.format_map(safe_row(row))
    except KeyError as e:
        from datamon.errors import UsageError

        raise UsageError(
            f"--format {safe(repr(fmt))}: there is no field {safe(repr(e.args[0]))}",
            f"available fields: {', '.join(sorted(row))}",
        ) from None
    except (IndexError, ValueError, TypeError, AttributeError) as e:
        from datamon.errors import UsageError

        raise UsageError(
            f"--format {safe(repr(fmt))} cannot be filled: {safe(str(e))}",
            f"available fields: {', '.join(sorted(row))}",
        ) from None


def emit(
    rows: Iterable[dict[str, Any]], *, as_json: bool, fmt: str | None, text: Callable[[dict[str, Any]], str]
) -> None:
    """Print rows as JSON lines, through a format template, or as human text.

    Human text and ``--format`` output show strings through ``safe``; JSON stays exact (and valid)."""
    out = sys.stdout
    for row in rows:
        if as_json:
            out.write(json_line(row) + "\n")
        elif fmt:
            out.write(fill(fmt, row) + "\n")
        else:
            out.write(_text_line(text, row) + "\n")
    out.flush()


def _text_line(text: Callable[[dict[str, Any]], str], row: dict[str, Any]) -> str:
    """``text(row)`` on escaped values (the template's own tabs and newlines stay as they are)."""
    return text(safe_row(row))


def verified_fields(b: Any) -> Any:
    """What bundle ``b``'s record says, after checking that the record hashes to its id
    (``check_record``) and that the database columns say the same; else ``IntegrityError``
    (exit 4) naming the bundle. Displays use these fields, never the columns."""
    from datamon.api.bundles import check_record
    from datamon.errors import IntegrityError
    from datamon.meta.records import decode_record, record_mismatch

    check_record(b)
    fields = decode_record(b.record, b.id)
    differ = record_mismatch(b, fields)
    if differ:
        raise IntegrityError(
            f"bundle {b.id} in repo {b.repo!r}: the metadata database's {', '.join(differ)} "
            "do not match its record",
            "the database was edited; restore it from a backup, or delete the bundle",
        )
    return fields


def bundle_row(b: Any, labels: list[str] | None = None) -> dict[str, Any]:
    """The display row of bundle ``b``, from its verified record (``IntegrityError`` if it fails)."""
    f = verified_fields(b)
    return {
        "id": b.id,
        "repo": b.repo,  # the current name: a renamed repo's records keep the one they were made under
        "time": iso(f.time_ns),
        "contributor": f"{f.contributor_name} <{f.contributor_email}>"
        if f.contributor_email
        else f.contributor_name,
        "message": f.message,
        "labels": labels or [],
        "parents": list(f.parents),
        "tree": f.tree,
        "files": f.file_count,
        "size": f.total_size,
        "meta": f.meta,
    }


def bundle_rows(bundles: Iterable[Any], labels: dict[str, list[str]]) -> Iterator[dict[str, Any]]:
    """Rows of ``bundles`` that pass ``verified_fields``. Those that fail are skipped, and once the
    good ones are out, ``IntegrityError`` (exit 4) names the first bad one and how many there were."""
    from datamon.errors import IntegrityError

    bad: list[tuple[str, IntegrityError]] = []
    for b in bundles:
        try:
            row = bundle_row(b, labels.get(b.id, []))
        except IntegrityError as e:
            bad.append((b.id, e))
            continue
        yield row
    if bad:
        first = bad[0][1]
        more = f" (and {len(bad) - 1} more bundles)" if len(bad) > 1 else ""
        raise IntegrityError(
            f"{len(bad)} bundle record(s) failed their check and were not listed: {first.message}{more}",
            first.hint,
        )


def label_row(lab: Any) -> dict[str, Any]:
    return {
        "repo": lab.repo,
        "label": lab.name,
        "name": lab.name,
        "bundle": lab.bundle_id,
        "id": lab.bundle_id,
        "time": iso(lab.updated_ns),
        "contributor": lab.contributor,
    }


class RichProgress:
    """Files, bytes and throughput on stderr; a no-op when stderr is not a terminal."""

    def __init__(self, verb: str) -> None:
        self.verb = verb
        self._p: Any = None
        self._task: Any = None
        self.enabled = sys.stderr.isatty()

    def start(self, files: int, nbytes: int) -> None:
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._p = Progress(
            TextColumn(f"{self.verb}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("{task.fields[files]}/{task.fields[total_files]} files"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._p.start()
        self._files = 0
        self._totals = [files, nbytes]
        self._task = self._p.add_task(self.verb, total=max(nbytes, 1), files=0, total_files=files)

    def grow(self, files: int, nbytes: int) -> None:
        """Raise the totals (a streaming upload discovers them as it walks)."""
        if self._p is not None:
            self._totals[0] += files
            self._totals[1] += nbytes
            self._p.update(self._task, total=max(self._totals[1], 1), total_files=self._totals[0])

    def advance(self, files: int, nbytes: int) -> None:
        if self._p is not None:
            self._files += files
            self._p.update(self._task, advance=nbytes, files=self._files)

    def finish(self) -> None:
        if self._p is not None:
            self._p.stop()
            self._p = None
