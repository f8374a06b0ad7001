"""Job files (JSON Lines, CSV, or a JSON array) read into validated jobs, every bad line named
with its number. A line is a create's request syntax, or the envelope form `{"request": {...},
"kind": ..., "network_interface_id": ..., "region": ..., "role_arn": ..., "external_id": ...}`
(any kind: tasks/contract.py JobKind); CSV has columns of those names beside the request's.

The CLI reads them from a file, the HTTP API from a request body: one reader for both.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.contract import (
    BOOLEAN_FIELDS,
    JOB_ENVELOPE_FIELDS,
    NOWHERE,
    JobKind,
    JobRequest,
    Placement,
    parse_job_entry,
    parse_json,
)
from tasks.errors import MAX_LISTED, BatchFileError, FieldError, InvalidJobError

# CSV cells are text. These columns hold EC2 integers: digits only become numbers; anything
# else (" 7 ", "1.5", "1_0") stays text for the contract to refuse, naming the field.
_INTEGER_COLUMNS = frozenset({"SessionNumber", "PacketLength", "VirtualNetworkId"})
_DIGITS = re.compile(r"[0-9]+")
_LINE_ENDS = re.compile(r"\r\n|\r|\n")


def _csv_row(row: dict[str, str | None]) -> dict[str, Any]:
    """Empty cells are absent; TagSpecifications and RemoveFields are JSON; booleans (DryRun,
    a delete's missing_ok: the contract's BOOLEAN_FIELDS) true/false; integers digits; the
    envelope columns (kind, network_interface_id, region, role_arn, external_id) make the
    line an envelope."""
    out: dict[str, Any] = {}
    placed: dict[str, Any] = {}
    for key, value in row.items():
        if key is None or value is None or value == "":
            continue
        if key in JOB_ENVELOPE_FIELDS and key != "request":
            placed[key] = value
        elif key in ("TagSpecifications", "RemoveFields"):
            out[key] = parse_json(value, key)
        elif key in BOOLEAN_FIELDS:
            out[key] = {"true": True, "false": False}.get(value.strip().lower(), value)
        elif key in _INTEGER_COLUMNS and _DIGITS.fullmatch(value):
            out[key] = int(value)
        else:
            out[key] = value
    return {"request": out, **placed} if placed else out


def _csv_records(text: str) -> Iterator[tuple[int, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        columns = reader.fieldnames or []
    except csv.Error as error:
        yield 1, InvalidJobError([{"field": "(line)", "message": f"not CSV: {error}"}])
        return
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        yield (
            1,
            InvalidJobError(
                [{"field": c, "message": "the column appears more than once"} for c in twice]
            ),
        )
        return
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:  # a cell over csv's limit (131,072 characters), a stray quote
            yield (
                reader.line_num + 1,  # csv counts only the lines it finished reading
                InvalidJobError([{"field": "(line)", "message": f"not CSV: {error}"}]),
            )
            return
        if None in row:
            yield reader.line_num, ValueError("more cells than column names")
            continue
        try:
            yield reader.line_num, _csv_row(row)
        except InvalidJobError as error:
            yield reader.line_num, error


def _records(text: str, fmt: str) -> Iterator[tuple[int, Any]]:
    if fmt == "csv":
        yield from _csv_records(text)
        return
    if fmt == "json":  # a JSON array of jobs: its items are numbered as lines are
        try:
            items = parse_json(text, "(body)")
        except InvalidJobError as error:
            yield 1, error
            return
        if not isinstance(items, list):
            yield 1, ValueError("expected a JSON array of jobs, or JSON Lines")
            return
        yield from enumerate(items, start=1)
        return
    # Lines end at \n (or \r\n, \r): not wherever str.splitlines sees a break, since JSON's
    # strings may hold U+0085, U+2028 and U+2029 as themselves.
    for number, line in enumerate(_LINE_ENDS.split(text), start=1):
        if line.strip():
            try:
                yield number, parse_json(line, "(line)")
            except InvalidJobError as error:
                yield number, error


@dataclass(frozen=True)
class Jobs:
    """A file's jobs: each request, and where it runs (the line's placement over the
    defaults)."""

    requests: list[JobRequest] = field(default_factory=list)
    placements: list[Placement] = field(default_factory=list)
    # A delete's or a modify's session source, if the line named it (None for a create).
    network_interface_ids: list[str | None] = field(default_factory=list)


def read_jobs(path: Path, fmt: str | None = None) -> list[JobRequest]:
    """Every job's request of a JSON Lines or CSV file, or BatchFileError naming every bad
    line (their placements: read_placed_jobs)."""
    return read_placed_jobs(path, fmt).requests


def read_placed_jobs(path: Path, fmt: str | None = None, defaults: Placement = NOWHERE) -> Jobs:
    """Every job of a JSON Lines or CSV file, or BatchFileError naming every bad line."""
    fmt = fmt or ("csv" if path.suffix.lower() == ".csv" else "jsonl")
    return parse_placed_jobs(path.read_text(encoding="utf-8"), fmt, str(path), defaults)


def parse_jobs(text: str, fmt: str, source: str = "the input") -> list[JobRequest]:
    return parse_placed_jobs(text, fmt, source).requests


def parse_placed_jobs(
    text: str, fmt: str, source: str = "the input", defaults: Placement = NOWHERE
) -> Jobs:
    """Every job of JSON Lines or CSV text, or BatchFileError naming the bad lines."""
    jobs = Jobs()
    errors: list[FieldError] = []
    total = 0

    def bad(line: int, found: list[FieldError]) -> None:
        nonlocal total
        total += len(found)
        errors.extend({**e, "line": line} for e in found[: MAX_LISTED - len(errors)])

    for line, raw in _records(text, fmt):
        if isinstance(raw, InvalidJobError):
            bad(line, raw.errors)
        elif isinstance(raw, ValueError):
            bad(line, [{"field": "(line)", "message": str(raw)}])
        else:
            try:
                job = parse_job_entry(raw, defaults)
            except InvalidJobError as error:
                bad(line, error.errors)
            else:
                jobs.requests.append(job.request)
                jobs.placements.append(job.placement)
                jobs.network_interface_ids.append(
                    None if job.kind is JobKind.CREATE else job.network_interface_id
                )
    if not jobs.requests and not total:
        bad(0, [{"field": "(file)", "message": f"{source} holds no jobs"}])
    if total:
        raise BatchFileError(errors, total)
    return jobs
