"""The custom transfer protocol: parsing, validation and serialisation of single lines."""

from __future__ import annotations

import json

import pytest

from datamon.lfs import protocol as P

OID = "ab" * 32


def test_init_is_parsed_with_all_fields() -> None:
    line = json.dumps(
        {
            "event": "init",
            "operation": "upload",
            "remote": "origin",
            "concurrent": True,
            "concurrenttransfers": 8,
        }
    )
    assert P.parse_request(line) == P.Init("upload", "origin", True, 8)


def test_init_with_only_operation_gets_defaults() -> None:
    assert P.parse_request(b'{"event":"init","operation":"download"}\n') == P.Init("download")


def test_upload_download_terminate_are_parsed() -> None:
    up = {"event": "upload", "oid": OID, "size": 3, "path": "/x/y", "action": None}
    assert P.parse_request(json.dumps(up)) == P.Upload(OID, 3, "/x/y")
    down = {"event": "download", "oid": OID, "size": 0, "action": {"href": "nfs://a", "header": {"k": "v"}}}
    assert P.parse_request(json.dumps(down)) == P.Download(OID, 0)
    assert P.parse_request('{"event":"terminate"}') == P.Terminate()


def test_unknown_fields_are_ignored() -> None:
    got = P.parse_request(json.dumps({"event": "download", "oid": OID, "size": 1, "future": [1, 2]}))
    assert got == P.Download(OID, 1)


def test_malformed_json_is_an_error_that_still_names_the_oid_when_visible() -> None:
    with pytest.raises(P.ProtocolError, match="not valid JSON") as e:
        P.parse_request('{"event":"download","oid":"' + OID + '","size":')
    assert e.value.oid == OID
    with pytest.raises(P.ProtocolError, match="not valid JSON") as e:
        P.parse_request("garbage")
    assert e.value.oid is None


@pytest.mark.parametrize("line", ["[1,2]", '"init"', "42", "null"])
def test_a_request_must_be_an_object(line: str) -> None:
    with pytest.raises(P.ProtocolError, match="JSON object"):
        P.parse_request(line)


def test_missing_and_unknown_events_are_errors() -> None:
    with pytest.raises(P.ProtocolError, match="no 'event'"):
        P.parse_request("{}")
    with pytest.raises(P.ProtocolError, match="unknown event 'verify'") as e:
        P.parse_request(json.dumps({"event": "verify", "oid": OID}))
    assert e.value.oid == OID and e.value.event == "verify"


@pytest.mark.parametrize("oid", [None, "", "AB" * 32, "ab" * 31, "ab" * 33, "zz" * 32, 12])
def test_oid_must_be_64_lowercase_hex(oid: object) -> None:
    with pytest.raises(P.ProtocolError, match="valid 'oid'"):
        P.parse_request(json.dumps({"event": "download", "oid": oid, "size": 1}))


@pytest.mark.parametrize("size", [None, -1, 1.5, "10", True])
def test_size_must_be_a_non_negative_integer(size: object) -> None:
    with pytest.raises(P.ProtocolError, match="valid 'size'") as e:
        P.parse_request(json.dumps({"event": "download", "oid": OID, "size": size}))
    assert e.value.oid == OID


@pytest.mark.parametrize("path", [None, "", 3])
def test_upload_needs_a_path(path: object) -> None:
    with pytest.raises(P.ProtocolError, match="no 'path'") as e:
        P.parse_request(json.dumps({"event": "upload", "oid": OID, "size": 1, "path": path}))
    assert e.value.oid == OID


def test_init_needs_a_known_operation() -> None:
    with pytest.raises(P.ProtocolError, match="operation 'sideways'"):
        P.parse_request('{"event":"init","operation":"sideways"}')


def test_oversized_line_is_rejected_before_parsing() -> None:
    with pytest.raises(P.ProtocolError, match="too long"):
        P.parse_request(b"{" + b" " * P.MAX_LINE + b"}")


def test_replies_are_single_compact_lines() -> None:
    assert P.encode(P.init_reply()) == b"{}\n"
    err = P.encode(P.init_reply((P.NOT_FOUND, "no repo\nat all")))
    assert err.count(b"\n") == 1 and err.endswith(b"\n")
    assert json.loads(err) == {"error": {"code": 404, "message": "no repo at all"}}
    assert json.loads(P.encode(P.progress(OID, 10, 4))) == {
        "event": "progress",
        "oid": OID,
        "bytesSoFar": 10,
        "bytesSinceLast": 4,
    }
    assert json.loads(P.encode(P.complete(OID))) == {"event": "complete", "oid": OID}
    assert json.loads(P.encode(P.complete(OID, path="/t/ü"))) == {
        "event": "complete",
        "oid": OID,
        "path": "/t/ü",
    }
    failed = json.loads(P.encode(P.complete(OID, path="/ignored", error=(P.MISMATCH, "bad"))))
    assert failed == {"event": "complete", "oid": OID, "error": {"code": 422, "message": "bad"}}


def test_replies_round_trip_through_json() -> None:
    for msg in (P.init_reply(), P.progress(OID, 0, 0), P.complete(OID, path="/p")):
        assert json.loads(P.encode(msg)) == msg
