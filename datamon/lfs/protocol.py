"""The Git LFS custom transfer protocol: message types, parsing, validation, replies.

git-lfs and an agent exchange one JSON object per line over stdin/stdout (git-lfs's
``docs/custom-transfers.md``). git-lfs sends ``init``, then any number of ``upload`` or
``download`` requests one at a time (it waits for each ``complete``), then ``terminate``.
The agent answers ``init`` with ``{}`` or ``{"error": …}``, sends ``progress`` messages while
bytes move and one ``complete`` per transfer, which carries an ``error`` if that object
failed. Nothing in this module does I/O: it turns lines into requests and replies into lines.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final, Literal

# Error codes in replies. git-lfs shows them as ``[code] message``; they follow the HTTP
# statuses the LFS batch API uses for the same situations.
BAD_REQUEST: Final = 400  # malformed line, unknown event, request out of order
NOT_FOUND: Final = 404  # the store does not have the object (or the repo does not exist)
MISMATCH: Final = 422  # uploaded bytes do not hash to the oid, or have another size
INTERNAL: Final = 500  # a bug, or stored bytes that fail verification
UNAVAILABLE: Final = 503  # the blob store or metadata database cannot be reached

MAX_LINE: Final = 1 << 20  # a request is a few hundred bytes; anything this long is garbage

_OID: Final = re.compile(r"^[0-9a-f]{64}$")
_OID_IN_TEXT: Final = re.compile(r'"oid"\s*:\s*"([0-9a-f]{64})"')

Operation = Literal["upload", "download"]


class ProtocolError(Exception):
    """A line that is not a valid request. ``oid`` is set when the line names one, so the
    error can be answered in that object's ``complete``."""

    def __init__(self, message: str, *, oid: str | None = None, event: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.oid = oid
        self.event = event


@dataclass(frozen=True)
class Init:
    operation: Operation
    remote: str | None = None
    concurrent: bool = True
    concurrent_transfers: int | None = None


@dataclass(frozen=True)
class Upload:
    oid: str
    size: int
    path: str


@dataclass(frozen=True)
class Download:
    oid: str
    size: int


@dataclass(frozen=True)
class Terminate:
    pass


Request = Init | Upload | Download | Terminate


def is_oid(value: object) -> bool:
    """True for a Git LFS object id: a SHA-256 as 64 lowercase hex characters."""
    return isinstance(value, str) and _OID.match(value) is not None


def parse_request(line: bytes | str) -> Request:
    """Parse one line from git-lfs. Raises ``ProtocolError`` for anything that is not a
    well-formed request; unknown extra fields are ignored (the protocol may grow)."""
    if len(line) > MAX_LINE:
        raise ProtocolError(f"request line of {len(line)} bytes is too long (limit {MAX_LINE})")
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as e:
        m = _OID_IN_TEXT.search(text)
        raise ProtocolError(
            f"request is not valid JSON ({e.msg} at column {e.colno})", oid=m.group(1) if m else None
        ) from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"request must be a JSON object, got {type(msg).__name__}")
    event = msg.get("event")
    oid = msg.get("oid") if is_oid(msg.get("oid")) else None
    if event == "init":
        return _parse_init(msg)
    if event == "upload":
        o, size = _oid_and_size(msg, "upload")
        path = msg.get("path")
        if not isinstance(path, str) or not path:
            raise ProtocolError("upload request has no 'path' to read the object from", oid=o, event="upload")
        return Upload(o, size, path)
    if event == "download":
        o, size = _oid_and_size(msg, "download")
        return Download(o, size)
    if event == "terminate":
        return Terminate()
    if event is None:
        raise ProtocolError("request has no 'event'", oid=oid)
    raise ProtocolError(
        f"unknown event {event!r} (expected init, upload, download or terminate)",
        oid=oid,
        event=str(event),
    )


def _parse_init(msg: dict[str, Any]) -> Init:
    op = msg.get("operation")
    if op not in ("upload", "download"):
        raise ProtocolError(f"init has operation {op!r}; expected 'upload' or 'download'", event="init")
    remote = msg.get("remote")
    concurrent = msg.get("concurrent", True)
    transfers = msg.get("concurrenttransfers")
    return Init(
        operation=op,
        remote=remote if isinstance(remote, str) else None,
        concurrent=concurrent if isinstance(concurrent, bool) else True,
        concurrent_transfers=transfers if _is_count(transfers) else None,
    )


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _oid_and_size(msg: dict[str, Any], event: str) -> tuple[str, int]:
    oid = msg.get("oid")
    if not is_oid(oid):
        raise ProtocolError(
            f"{event} request has no valid 'oid' (64 lowercase hex chars): {oid!r}", event=event
        )
    size = msg.get("size")
    if not _is_count(size):
        raise ProtocolError(
            f"{event} request has no valid 'size' (a non-negative integer): {size!r}", oid=oid, event=event
        )
    return oid, size  # type: ignore[return-value]


# -- replies ---------------------------------------------------------------------------------
def error_body(code: int, message: str) -> dict[str, Any]:
    # One line per message: a newline in a message would be escaped by json anyway, but
    # git-lfs shows the message inline, so keep it flat.
    return {"code": code, "message": " ".join(message.split())}


def init_reply(error: tuple[int, str] | None = None) -> dict[str, Any]:
    """``{}`` or ``{"error": {"code", "message"}}``."""
    return {} if error is None else {"error": error_body(*error)}


def progress(oid: str, bytes_so_far: int, bytes_since_last: int) -> dict[str, Any]:
    return {"event": "progress", "oid": oid, "bytesSoFar": bytes_so_far, "bytesSinceLast": bytes_since_last}


def complete(oid: str, *, path: str | None = None, error: tuple[int, str] | None = None) -> dict[str, Any]:
    """A transfer's final message: with ``path`` for a finished download, ``error`` for a failure."""
    msg: dict[str, Any] = {"event": "complete", "oid": oid}
    if error is not None:
        msg["error"] = error_body(*error)
    elif path is not None:
        msg["path"] = path
    return msg


def encode(msg: dict[str, Any]) -> bytes:
    """One reply as a single line of compact JSON ending in ``\\n``."""
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
