"""Batches: job files read with line numbers, and each batch's record in Redis.

A batch's status costs the same for 10 or 10,000 jobs: counts by status are kept in a hash
and moved atomically with each job's record (tasks/store.py).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from tasks import keys
from tasks.contract import TERMINAL_STATUSES, InvalidJobError, SessionRequest, parse_request

# Move one job from its old status to `new` (never out of a terminal one), then count it
# done and stamp the batch's end when the last job finishes. A Lua function, so the result
# store's script (tasks/store.py) can move the counts in the same atomic step.
TRANSITION_FUNCTION = """
local function transition(statuses, counts, batch, job, new, now, terminal_csv)
  local old = redis.call('HGET', statuses, job)
  if old == new then return 0 end
  local terminal = {}
  for status in string.gmatch(terminal_csv, '[^,]+') do terminal[status] = true end
  if old and terminal[old] then return 0 end
  redis.call('HSET', statuses, job, new)
  if old then redis.call('HINCRBY', counts, old, -1) end
  redis.call('HINCRBY', counts, new, 1)
  if terminal[new] then
    local done = redis.call('HINCRBY', batch, 'done', 1)
    if done >= tonumber(redis.call('HGET', batch, 'total') or '0') then
      redis.call('HSET', batch, 'finished_at', now)
    end
  end
  return 1
end
"""
TERMINAL_ARG = ",".join(sorted(TERMINAL_STATUSES))
CHUNK = 1000


def batch_keys(batch_id: str) -> list[str]:
    """The keys a transition moves: the job's status, the counts, the batch's record."""
    return [keys.batch_statuses(batch_id), keys.batch_counts(batch_id), keys.batch(batch_id)]


@dataclass(frozen=True)
class LineError:
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.message}"


class BatchFileError(ValueError):
    """A job file with bad lines; lists every one of them."""

    def __init__(self, errors: list[LineError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


def _csv_row(row: dict[str, str | None]) -> dict[str, Any]:
    """CSV cells are text: empty means absent, TagSpecifications is JSON, numbers stay text
    for the contract to parse (so "1.5" is refused, not truncated)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key is None or value is None or value == "":
            continue
        if key == "TagSpecifications":
            out[key] = json.loads(value)
        elif key == "DryRun":
            out[key] = {"true": True, "false": False}.get(value.strip().lower(), value)
        else:
            out[key] = value
    return out


def _records(text: str, fmt: str) -> Iterator[tuple[int, Any]]:
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        for row in reader:
            if None in row:
                yield reader.line_num, ValueError("more cells than column names")
                continue
            try:
                yield reader.line_num, _csv_row(row)
            except ValueError as error:
                yield reader.line_num, ValueError(f"TagSpecifications is not JSON: {error}")
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except ValueError as error:
                yield number, ValueError(f"not JSON: {error}")


def read_jobs(path: Path, fmt: str | None = None) -> list[SessionRequest]:
    """Every job of a JSON Lines or CSV file, or BatchFileError naming every bad line."""
    fmt = fmt or ("csv" if path.suffix.lower() == ".csv" else "jsonl")
    text = path.read_text(encoding="utf-8")
    jobs: list[SessionRequest] = []
    errors: list[LineError] = []
    for line, raw in _records(text, fmt):
        if isinstance(raw, ValueError):
            errors.append(LineError(line, "(line)", str(raw)))
            continue
        try:
            jobs.append(parse_request(raw))
        except InvalidJobError as error:
            errors += [LineError(line, e["field"], e["message"]) for e in error.errors]
    if not jobs and not errors:
        errors.append(LineError(0, "(file)", f"{path} holds no jobs"))
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
            pipe.hset(keys.batch_counts(batch_id), mapping={"queued": len(job_ids)})
            for start in range(0, len(job_ids), CHUNK):
                chunk = job_ids[start : start + CHUNK]
                pipe.rpush(keys.batch_jobs(batch_id), *chunk)
                pipe.hset(keys.batch_statuses(batch_id), mapping=dict.fromkeys(chunk, "queued"))
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
