"""Batches: job files read with line numbers, and each batch's record in Redis.

A batch's status costs the same for 10 or 10,000 jobs: counts by status are kept in a hash
and moved atomically with each job's record (tasks/store.py).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from tasks import keys
from tasks.contract import SessionRequest, parse_json, parse_request
from tasks.errors import FieldError, InvalidJobError
from tasks.records import JobStatus

CHUNK = 1000

# CSV cells are text. These columns hold EC2 integers: digits only become numbers; anything
# else (" 7 ", "1.5", "1_0") stays text for the contract to refuse, naming the field.
_INTEGER_COLUMNS = frozenset({"SessionNumber", "PacketLength", "VirtualNetworkId"})
_DIGITS = re.compile(r"[0-9]+")


class BatchFileError(InvalidJobError):
    """A job file with bad lines; lists every one of them, each with its line number."""


def _csv_row(row: dict[str, str | None]) -> dict[str, Any]:
    """Empty cells are absent; TagSpecifications is JSON; DryRun true/false; integers digits."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key is None or value is None or value == "":
            continue
        if key == "TagSpecifications":
            out[key] = parse_json(value, "TagSpecifications")
        elif key == "DryRun":
            out[key] = {"true": True, "false": False}.get(value.strip().lower(), value)
        elif key in _INTEGER_COLUMNS and _DIGITS.fullmatch(value):
            out[key] = int(value)
        else:
            out[key] = value
    return out


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
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield number, parse_json(line, "(line)")
            except InvalidJobError as error:
                yield number, error


def read_jobs(path: Path, fmt: str | None = None) -> list[SessionRequest]:
    """Every job of a JSON Lines or CSV file, or BatchFileError naming every bad line."""
    fmt = fmt or ("csv" if path.suffix.lower() == ".csv" else "jsonl")
    text = path.read_text(encoding="utf-8")
    jobs: list[SessionRequest] = []
    errors: list[FieldError] = []
    for line, raw in _records(text, fmt):
        if isinstance(raw, InvalidJobError):
            errors += [{**e, "line": line} for e in raw.errors]
            continue
        if isinstance(raw, ValueError):
            errors.append({"field": "(line)", "message": str(raw), "line": line})
            continue
        try:
            jobs.append(parse_request(raw))
        except InvalidJobError as error:
            errors += [{**e, "line": line} for e in error.errors]
    if not jobs and not errors:
        errors.append({"field": "(file)", "message": f"{path} holds no jobs", "line": 0})
    if errors:
        raise BatchFileError(errors)
    return jobs


class BatchStore:
    """Each batch's record: totals, counts by status, job order, start and end."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.redis = client
        self.ttl_s = ttl_s

    def create(
        self,
        pipe: Any,
        batch_id: str,
        job_ids: list[str],
        submitted_at: str,
        source: str | None,
        plan: dict[str, Any] | None,
    ) -> None:
        """Queue the batch's record on `pipe` (the caller executes it with the jobs')."""
        meta = {
            "total": len(job_ids),
            "done": 0,
            "submitted_at": submitted_at,
            "source": source or "",
            "plan": json.dumps(plan or {}),
        }
        pipe.hset(keys.batch(batch_id), mapping=meta)
        if job_ids:
            pipe.hset(keys.batch_counts(batch_id), mapping={JobStatus.QUEUED: len(job_ids)})
            for start in range(0, len(job_ids), CHUNK):
                chunk = job_ids[start : start + CHUNK]
                pipe.rpush(keys.batch_jobs(batch_id), *chunk)
                pipe.hset(
                    keys.batch_statuses(batch_id), mapping=dict.fromkeys(chunk, JobStatus.QUEUED)
                )
        else:
            pipe.hset(keys.batch(batch_id), "finished_at", submitted_at)
        for key in (
            keys.batch(batch_id),
            keys.batch_counts(batch_id),
            keys.batch_statuses(batch_id),
            keys.batch_jobs(batch_id),
        ):
            pipe.expire(key, self.ttl_s)

    def status(self, batch_id: str) -> dict[str, Any] | None:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.batch(batch_id))
            pipe.hgetall(keys.batch_counts(batch_id))
            meta, counts = pipe.execute()
        if not meta:
            return None
        text = {k.decode(): v.decode() for k, v in meta.items()}
        return {
            "batch_id": batch_id,
            "total": int(text["total"]),
            "done": int(text.get("done", 0)),
            "counts": {k.decode(): int(v) for k, v in counts.items() if int(v)},
            "submitted_at": text["submitted_at"],
            "finished_at": text.get("finished_at"),
            "source": text.get("source") or None,
            "plan": json.loads(text.get("plan") or "{}"),
        }

    def job_ids(self, batch_id: str) -> Iterator[list[str]]:
        """The batch's job ids in submission order, a chunk at a time."""
        start = 0
        while chunk := self.redis.lrange(keys.batch_jobs(batch_id), start, start + CHUNK - 1):
            yield [j.decode() if isinstance(j, bytes) else j for j in chunk]
            start += CHUNK
