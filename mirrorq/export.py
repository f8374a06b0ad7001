"""Job records exported as JSON Lines or CSV: one column list, used by the CLI and the API.

CSV cells that a spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`, a tab
or a carriage return, as OWASP lists them) are prefixed with a single quote, so a hostile
ClientToken or error message arrives as text, never as a live formula.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

# (column, where its value comes from: the record, its request, its session, its error)
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("job_id", "record", "job_id"),
    ("status", "record", "status"),
    ("attempts", "record", "attempts"),
    ("account_id", "record", "account_id"),
    ("region", "record", "region"),
    ("role_arn", "record", "role_arn"),
    ("NetworkInterfaceId", "request", "NetworkInterfaceId"),
    ("TrafficMirrorTargetId", "request", "TrafficMirrorTargetId"),
    ("TrafficMirrorFilterId", "request", "TrafficMirrorFilterId"),
    ("SessionNumber", "request", "SessionNumber"),
    ("TrafficMirrorSessionId", "session", "TrafficMirrorSessionId"),
    ("error_code", "error", "code"),
    ("error_message", "error", "message"),
    ("client_token", "record", "client_token"),
    ("rule", "record", "rule"),
    ("event_id", "record", "event_id"),
    ("submitted_at", "record", "submitted_at"),
    ("started_at", "record", "started_at"),
    ("finished_at", "record", "finished_at"),
    # Last, so the columns before keep their places: what the job did (create, delete,
    # modify); a record without one is a create's.
    ("kind", "record", "kind"),
)
RESULT_COLUMNS = tuple(name for name, _, _ in COLUMNS)
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A value safe to put in a spreadsheet cell (text that would run is quoted)."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def result_row(record: Mapping[str, Any]) -> dict[str, Any]:
    sources = {
        "record": record,
        "request": record.get("request") or {},
        "session": (record.get("response") or {}).get("TrafficMirrorSession") or {},
        "error": record.get("error") or {},
    }
    row = {name: csv_cell(sources[source].get(key)) for name, source, key in COLUMNS}
    # A delete or a modify names its session in its request, its ENI beside it.
    row["kind"] = row["kind"] or "create"
    if row["TrafficMirrorSessionId"] is None:
        row["TrafficMirrorSessionId"] = csv_cell(sources["request"].get("TrafficMirrorSessionId"))
    if row["NetworkInterfaceId"] is None:
        row["NetworkInterfaceId"] = csv_cell(record.get("network_interface_id"))
    return row


def jsonl_lines(records: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    for record in records:
        yield json.dumps(record, separators=(",", ":")) + "\n"


def csv_lines(records: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    """The header, then a line per record: streamable, a row at a time."""
    out = io.StringIO()
    # RFC 4180's CRLF: the writer quotes a cell holding either character, so a lone CR
    # inside a cell cannot start a row of its own in the reader.
    writer = csv.DictWriter(out, fieldnames=RESULT_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    for record in records:
        writer.writerow(result_row(record))
        yield out.getvalue()
        out.seek(0)
        out.truncate()
    if out.getvalue():
        yield out.getvalue()


def export_lines(records: Iterable[Mapping[str, Any]], fmt: str) -> Iterator[str]:
    return csv_lines(records) if fmt == "csv" else jsonl_lines(records)
