"""Plain records the metadata store hands out. No SQLAlchemy types leak past ``meta/``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RepoRecord:
    name: str
    description: str
    created_ns: int
    bundle_count: int = 0
    creator_name: str = ""
    creator_email: str = ""


@dataclass(frozen=True)
class BundleRecord:
    """One immutable snapshot. ``record`` is the canonical encoding whose BLAKE3 is ``id``."""

    id: str  # 64 lowercase hex chars
    repo: str
    tree: str  # root tree key, 64 hex
    parents: tuple[str, ...]
    message: str
    contributor_name: str
    contributor_email: str
    created_ns: int
    file_count: int
    total_size: int
    record: bytes = field(repr=False)
    # Names the repo had before ``repo rename`` (its records keep the name they were written under).
    former_names: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @property
    def meta(self) -> dict[str, object]:
        """The bundle's metadata (``--meta``), from its record; ``{}`` when it has none."""
        return _record_extras(self.record)[0]

    @property
    def attrs(self) -> str | None:
        """The key (hex) of the bundle's file attributes object in the blob store, or ``None``."""
        return _record_extras(self.record)[1]


def _record_extras(raw: bytes) -> tuple[dict[str, object], str | None]:
    """``meta`` and ``attrs`` of a record, without judging it (``decode_record`` does that):
    anything unexpected reads as absent."""
    import json

    try:
        d = json.loads(raw)
    except (ValueError, RecursionError):
        return {}, None
    if not isinstance(d, dict):
        return {}, None
    meta = d.get("meta")
    attrs = d.get("attrs")
    return (
        dict(meta) if isinstance(meta, dict) else {},
        attrs if _is_hex64(attrs) else None,
    )


@dataclass(frozen=True)
class LabelRecord:
    repo: str
    name: str
    bundle_id: str
    updated_ns: int
    contributor: str


@dataclass(frozen=True)
class LabelEvent:
    repo: str
    name: str
    old_bundle_id: str | None
    new_bundle_id: str | None  # None when the label was deleted
    time_ns: int
    contributor: str


@dataclass(frozen=True)
class PackRecord:
    name: str
    size: int
    object_count: int
    created_ns: int


# One row of the object index, as plain tuples so that cas/ and meta/ share no types:
# (key: bytes(32), pack: str, offset: int, length: int, raw_length: int, kind: int, compression: int)
IndexRow = tuple[bytes, str, int, int, int, int, int]
# What ``add_pack`` receives per object: the same minus the pack name.
PackEntry = tuple[bytes, int, int, int, int, int]


# --- the canonical bundle record (docs/format.md), decoded for display -------------------------

RECORD_VERSION = 1
# Version 2 is version 1 plus the optional keys below; a record without them is written as version 1,
# byte for byte what older datamons wrote, so bundles without metadata keep their ids.
RECORD_VERSION_EXTRAS = 2
_OPTIONAL_KEYS = frozenset({"meta", "attrs"})
MAX_META_BYTES = 64 << 10
MAX_META_KEY = 255
MAX_RECORD_BYTES = 16 << 20
_RECORD_KEYS = frozenset(
    {"contributor", "files", "message", "parents", "repo", "size", "time_ns", "tree", "version"}
)
_HEX64 = frozenset("0123456789abcdef")
_INT64 = 1 << 63


@dataclass(frozen=True)
class RecordFields:
    """What a bundle record says, after checking it is a canonical version-1 record."""

    repo: str
    tree: str
    parents: tuple[str, ...]
    message: str
    contributor_name: str
    contributor_email: str
    time_ns: int
    file_count: int
    total_size: int
    meta: dict[str, object] = field(default_factory=dict)
    attrs: str | None = None


def _damaged(bundle_id: str, why: str) -> Exception:
    from datamon.errors import IntegrityError

    return IntegrityError(
        f"bundle {bundle_id or '(unknown)'}: its record is damaged ({why})",
        "restore the metadata database from a backup, or delete the bundle",
    )


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise ValueError("duplicate keys")
    return d


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def _is_hex64(v: object) -> bool:
    return isinstance(v, str) and len(v) == 64 and _HEX64.issuperset(v)


def _int_in(v: object, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v < hi


def decode_record(raw: bytes, bundle_id: str = "") -> RecordFields:
    """The fields of a bundle record, or ``IntegrityError`` (exit 4) naming ``bundle_id``.

    The record must be canonical (compact JSON, sorted keys, UTF-8: re-encoding it gives the same
    bytes), version 1, with exactly the documented keys and types. This does not hash: the caller
    checks that the bytes hash to the id (``api.bundles.check_record``)."""
    import json

    if not isinstance(raw, bytes | bytearray | memoryview):
        raise _damaged(bundle_id, "not bytes")
    raw = bytes(raw)
    if len(raw) > MAX_RECORD_BYTES:
        raise _damaged(bundle_id, f"{len(raw)} bytes, more than a record can be")
    try:
        d = json.loads(
            raw.decode("utf-8"), object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _damaged(bundle_id, f"not JSON: {str(e)[:80]}") from None
    if not isinstance(d, dict) or not _RECORD_KEYS <= set(d) <= _RECORD_KEYS | _OPTIONAL_KEYS:
        raise _damaged(bundle_id, "not a bundle record")
    extras = set(d) - _RECORD_KEYS
    version = RECORD_VERSION_EXTRAS if extras else RECORD_VERSION
    if not _int_in(d["version"], version, version + 1):
        raise _damaged(bundle_id, f"version {str(d['version'])[:20]}, not {version}")
    if "meta" in d:
        problem = meta_problem(d["meta"])
        if problem or not d["meta"]:
            raise _damaged(bundle_id, f"bad meta: {problem or 'empty'}")
    if "attrs" in d and not _is_hex64(d["attrs"]):
        raise _damaged(bundle_id, "bad attributes key")
    c = d["contributor"]
    if not isinstance(c, dict) or set(c) != {"email", "name"}:
        raise _damaged(bundle_id, "bad contributor")
    strings = (d["repo"], d["message"], c["name"], c["email"])
    if not all(isinstance(s, str) for s in strings):
        raise _damaged(bundle_id, "a text field is not a string")
    if any("\ud800" <= ch <= "\udfff" for s in strings for ch in s):
        raise _damaged(bundle_id, "a text field is not valid Unicode")
    if not _is_hex64(d["tree"]):
        raise _damaged(bundle_id, "bad tree key")
    parents = d["parents"]
    if not isinstance(parents, list) or not all(_is_hex64(p) for p in parents):
        raise _damaged(bundle_id, "bad parents")
    if not _int_in(d["files"], 0, _INT64) or not _int_in(d["size"], 0, _INT64):
        raise _damaged(bundle_id, "bad file count or size")
    if not _int_in(d["time_ns"], -_INT64, _INT64):
        raise _damaged(bundle_id, "bad time")
    canonical = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    if canonical != raw:
        raise _damaged(bundle_id, "not in canonical form")
    return RecordFields(
        repo=d["repo"],
        tree=d["tree"],
        parents=tuple(parents),
        message=d["message"],
        contributor_name=c["name"],
        contributor_email=c["email"],
        time_ns=d["time_ns"],
        file_count=d["files"],
        total_size=d["size"],
        meta=d.get("meta", {}),
        attrs=d.get("attrs"),
    )


def _meta_value_ok(v: object, depth: int = 0) -> bool:
    if v is None or isinstance(v, bool | str):
        return not isinstance(v, str) or not any("\ud800" <= ch <= "\udfff" for ch in v)
    if isinstance(v, int):
        return -_INT64 <= v < _INT64
    if isinstance(v, float):
        import math

        return math.isfinite(v)
    if depth >= 8:
        return False
    if isinstance(v, list):
        return all(_meta_value_ok(x, depth + 1) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _meta_value_ok(x, depth + 1) for k, x in v.items())
    return False


def meta_problem(meta: object) -> str | None:
    """Why ``meta`` cannot be a bundle's metadata, or ``None`` when it can: a JSON object whose keys
    are 1-255 characters without NUL, whose values are JSON (finite numbers, integers within 64 bits,
    nesting at most 8 deep), at most 64 KiB encoded."""
    import json

    if not isinstance(meta, dict):
        return "not a JSON object"
    for k in meta:
        if not isinstance(k, str) or not 0 < len(k) <= MAX_META_KEY or "\x00" in k:
            return f"key {str(k)[:40]!r} is not 1-{MAX_META_KEY} characters without NUL"
        if any("\ud800" <= ch <= "\udfff" for ch in k):
            return f"key {k[:40]!r} is not valid Unicode"
        if not _meta_value_ok(meta[k]):
            return f"the value of {k[:40]!r} is not storable JSON"
    size = len(json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_META_BYTES:
        return f"{size} bytes encoded, more than {MAX_META_BYTES}"
    return None


def record_mismatch(b: BundleRecord, f: RecordFields) -> list[str]:
    """Names of the columns of ``b`` that differ from what its record says (empty: they agree)."""
    # A record names the repo it was written in: the current name, or one it had before a rename.
    repo = f.repo if f.repo in b.former_names else b.repo
    pairs = (
        ("repo", repo, f.repo),
        ("tree", b.tree, f.tree),
        ("parents", tuple(b.parents), f.parents),
        ("message", b.message, f.message),
        ("contributor name", b.contributor_name, f.contributor_name),
        ("contributor email", b.contributor_email, f.contributor_email),
        ("time", b.created_ns, f.time_ns),
        ("file count", b.file_count, f.file_count),
        ("size", b.total_size, f.total_size),
    )
    return [name for name, column, recorded in pairs if column != recorded]


@dataclass(frozen=True)
class SchemaRecord:
    """One version of a repo's schema (``repo schema set``): canonical JSON text, ``{}`` for none."""

    repo: str
    version: int
    schema: str
    time_ns: int
    contributor: str


# One node of the file index (docs/query.md): its id, its links (seq, name, child) and its files
# (name, kind, size, key, mode, mtime_ns, attrs as canonical JSON text or None).
IndexLink = tuple[int, str, bytes]
IndexFile = tuple[str, int, int, bytes, int, int, str | None]
IndexNode = tuple[bytes, list[IndexLink], list[IndexFile]]
