"""The Lua scripts that write job records: each one atomic step, one round trip.

tasks/store.py runs them; they live here so each can be read whole, beside its arguments.

A script's keys are its KEYS, as Redis Cluster wants them (each listed above the script);
everything else is one JSON object, ARGV[1] (`arguments`), read in Lua as `a.<name>` after
`local a = cjson.decode(ARGV[1])`. The names are typed once, by the script's TypedDict here
(`StepArguments`, ...), which tasks/store.py fills. The rules the scripts apply come from
tasks/records.py as data in those arguments (the terminal statuses: `terminal`; `queued`),
not written again in Lua; what STEP answers is a records.StepVerdict.

Values in the arguments, as Lua sees them: cjson decodes a number to a double, exact for the
integers (ms, s) and the floats (Unix times, as sorted-set scores) passed here, and Redis
hands a number to a command as text that reads back as the same double (17 significant
digits; the shortest such text from Redis 7.2). A value Redis keeps as text exactly as given
(a record, a duration added to a sum) is passed as text. JSON null would decode to
cjson.null, which is not nil and is true in Lua: an absent value is a field left out
(NotRequired), never null.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Literal, NotRequired, TypedDict

from tasks.records import TERMINAL_STATUSES

Step = Literal["start", "save", "finish"]

# TERMINAL_STATUSES as a Lua set: a JSON object, {"created": true, ...} (a JSON array would
# need a loop in Lua to look one up).
TERMINAL: dict[str, bool] = {status.value: True for status in sorted(TERMINAL_STATUSES)}


# Text goes as it is (UTF-8), so the bytes Redis gets are those a positional argument's were.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def arguments(named: Mapping[str, object]) -> list[str]:
    """A script's ARGV: its named arguments as one JSON object."""
    return [_ENCODER.encode(named)]


# The record in a value read back from a record's key (Celery's meta: the record is its
# `result`); nil for none.
_RECORD_IN = """
local function record_in(value)
  local meta = value and cjson.decode(value)
  local record = meta and meta['result']
  if type(record) == 'table' then return record end
  return nil
end
"""

# Move one registered job of a batch (KEYS[7]..KEYS[12], as STEP has them) from its old
# status to `a.status` (never out of a terminal one: `a.terminal`), then count it done and
# stamp the batch's end when the last job finishes. A job the batch did not register (a
# stranger naming the batch) moves nothing and creates no key.
_TRANSITION = """
local function transition(a)
  local statuses, counts, batch, running = KEYS[7], KEYS[8], KEYS[9], KEYS[10]
  local placed, placed_counts = KEYS[11], KEYS[12]
  local old, new = redis.call('HGET', statuses, a.job), a.status
  if not old or old == new or a.terminal[old] then return end
  redis.call('HSET', statuses, a.job, new)
  redis.call('HINCRBY', counts, old, -1)
  redis.call('HINCRBY', counts, new, 1)
  -- A batch spanning several accounts or Regions: the job's (account/region), fixed at
  -- acceptance, and its counts by (account/region/status).
  local where = placed and redis.call('HGET', placed, a.job)
  if where then
    redis.call('HINCRBY', placed_counts, where .. '/' .. old, -1)
    redis.call('HINCRBY', placed_counts, where .. '/' .. new, 1)
  end
  if a.terminal[new] then
    local done = redis.call('HINCRBY', batch, 'done', 1)
    if done >= tonumber(redis.call('HGET', batch, 'total') or '0') then
      redis.call('HSET', batch, 'finished_at', a.now)
      redis.call('SREM', running, a.batch)
    end
  end
end
"""


# Jobs of ACCEPT_MANY's or UNACCEPT_MANY's arguments `a` tallied (`tally(a, n)`: the n-th
# job's status a.statuses[n] and place a.places[n]), then added `sign` times to the fleet's
# counters (`count_tally(key, sign)`: the status counts `key` and its ':placed' twin) in one
# HINCRBY a field.
_TALLY = """
local by_status, by_place = {}, {}
local function tally(a, n)
  local status = a.statuses[n]
  local field = a.places[n] .. '/' .. status
  by_status[status] = (by_status[status] or 0) + 1
  by_place[field] = (by_place[field] or 0) + 1
end
local function count_tally(key, sign)
  for status, n in pairs(by_status) do redis.call('HINCRBY', key, status, sign * n) end
  for field, n in pairs(by_place) do redis.call('HINCRBY', key .. ':placed', field, sign * n) end
end
"""


class WorkerScope(TypedDict):
    """Where the worker taking the step acts with its own credentials, and the queue it reads."""

    account: str  # '' for the default account
    region: str
    queue: str


class JobPlacement(TypedDict):
    """Where the job runs, as the record the step writes says ('' for none)."""

    account: str
    region: str
    role: str  # its role's ARN
    queue: str  # the queue that carries it


class StepArguments(TypedDict):
    step: Step  # start | save | finish
    record: str  # the value to write: Celery's meta of the record, as its backend encodes it
    ttl_s: int  # the record's lifetime
    job: str  # the job's id
    token: str  # this step's run lease token ('' for a refusal, which holds none)
    lease_ms: int  # the run lease's lifetime
    status: str  # the record's status (JobStatus)
    now: str  # the record's finished_at, else started_at, else '': a batch's end, if last
    terminal: dict[str, bool]  # TERMINAL: statuses no write leaves
    queued: str  # JobStatus.QUEUED: a record stored in any other status ran before
    error_code: NotRequired[str]  # a failed job's code, counted by code
    seconds: NotRequired[str]  # a finished job's time from submission, as text
    buckets: NotRequired[list[str]]  # with seconds: the duration histogram's upper bounds,
    # as its fields are named (only then: a dozen strings cost Redis a few µs to decode)
    batch: str  # the batch's id, '' for none
    worker: WorkerScope
    placement: JobPlacement


# One step of a job, as a worker takes it, with the fleet's counters (what /metrics reads).
# One script, one round trip: a pipeline of scripts would cost redis-py a SCRIPT EXISTS round
# trip each time.
# KEYS: record, pending index, job lease, status counts, failures by code, durations
#       [, batch statuses, batch counts, batch record, running batches, batch placements,
#       batch counts by placement]
# ARGV[1]: StepArguments
# Returns {verdict[, the record stored]}, verdict a records.StepVerdict (its values say what
# each one means): busy, done, elsewhere (start), not-in-batch (start), resume (start), stored.
# Whether this worker can act for the job (elsewhere): a job runs on any worker reading the
# queue that carries it (the accepting fleet's: each assumes a job's role, and its own
# credentials serve any Region); one without a role must also be in the worker's own account.
# The stored record decides (the one written here, for a job sent with no record); records
# written before queues must match the worker's account and Region; with no Region, anywhere.
STEP = (
    _RECORD_IN
    + _TRANSITION
    + """
local a = cjson.decode(ARGV[1])
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= a.token then return {'busy'} end
local current = redis.call('GET', KEYS[1])
local stored = record_in(current)
local was = stored and stored['status']
-- A finished job is never written again (records.TERMINAL_STATUSES, given as a.terminal).
if was and a.terminal[was] then
  if holder then redis.call('DEL', KEYS[3]) end
  redis.call('ZREM', KEYS[2], a.job)
  return {'done', current}
end
if a.step == 'start' then
  local place = a.placement
  local account, region, role, queue = place.account, place.region, place.role, place.queue
  if stored then
    local function text(value) if type(value) == 'string' then return value end return '' end
    account, region = text(stored['account_id']), text(stored['region'])
    role, queue = text(stored['role_arn']), text(stored['queue'])
  end
  if region ~= '' then
    local here, worker = nil, a.worker
    if queue ~= '' then here = queue == worker.queue and (role ~= '' or account == worker.account)
    else here = account == worker.account and region == worker.region  -- a record before queues
    end
    if not here then
      if current then return {'elsewhere', current} end
      return {'elsewhere'}
    end
  end
  if #KEYS >= 10 and redis.call('HEXISTS', KEYS[7], a.job) == 0 then return {'not-in-batch'} end
  if current and was ~= a.queued then  -- it ran before: the worker carries on from its record
    redis.call('SET', KEYS[3], a.token, 'PX', a.lease_ms)
    return {'resume', current}
  end
end
if a.step == 'finish' then
  if holder then redis.call('DEL', KEYS[3]) end
  redis.call('ZREM', KEYS[2], a.job)
else
  redis.call('SET', KEYS[3], a.token, 'PX', a.lease_ms)
end
redis.call('SET', KEYS[1], a.record, 'EX', a.ttl_s)
redis.call('PUBLISH', KEYS[1], a.record)
if was ~= a.status then  -- the fleet's counters count each arrival in a status once
  redis.call('HINCRBY', KEYS[4], a.status, 1)
  local place = a.placement.account ~= '' and a.placement.account or 'default'
  local field = place .. '/' .. a.placement.region .. '/' .. a.status
  redis.call('HINCRBY', KEYS[4] .. ':placed', field, 1)
  if a.error_code then redis.call('HINCRBY', KEYS[5], a.error_code, 1) end
  if a.seconds then
    local seconds, bucket = tonumber(a.seconds), '+Inf'
    for _, bound in ipairs(a.buckets) do
      if seconds <= tonumber(bound) then bucket = bound break end
    end
    redis.call('HINCRBY', KEYS[6], bucket, 1)
    redis.call('HINCRBY', KEYS[6], 'count', 1)
    redis.call('HINCRBYFLOAT', KEYS[6], 'sum', a.seconds)
  end
end
if #KEYS >= 10 then transition(a) end
return {'stored'}
"""
)


class AcceptArguments(TypedDict):
    record: str  # the value to write: Celery's meta of the `queued` record
    ttl_s: int  # the record's (and the claim's) lifetime
    job: str  # the job's id
    now: float  # Unix time: the job's score in the pending index
    status: str  # the record's status
    place: str  # the job's "<account>/<region>" (tasks/batches.py place_of_record)
    claim: NotRequired[str]  # with KEYS[4]: the idempotency claim to write there


# Accept a job: its idempotency claim (if it has a key), its record and its pending entry,
# all or nothing. Returns nil when accepted, else the claim that was there first. The same
# acceptance made again (tasks/replication.py: one not confirmed is made again, and may meet
# a primary that kept the first) writes the same again and counts the job only once: the
# fleet's counters count a record this script wrote where there was none.
# KEYS: record, pending index, status counts[, idempotency key]
# ARGV[1]: AcceptArguments
ACCEPT = """
local a = cjson.decode(ARGV[1])
if #KEYS == 4 then
  if not redis.call('SET', KEYS[4], a.claim, 'NX', 'EX', a.ttl_s) then
    return redis.call('GET', KEYS[4])
  end
end
local kept = redis.call('EXISTS', KEYS[1]) == 1
redis.call('SET', KEYS[1], a.record, 'EX', a.ttl_s)
redis.call('ZADD', KEYS[2], a.now, a.job)
if not kept then
  redis.call('HINCRBY', KEYS[3], a.status, 1)
  redis.call('HINCRBY', KEYS[3] .. ':placed', a.place .. '/' .. a.status, 1)
end
return false
"""


class AcceptManyArguments(TypedDict):
    records: list[str]  # the values to write, one a record key (KEYS[3..]): Celery's meta
    jobs: list[str]  # the jobs' ids, in the same order
    statuses: list[str]  # their records' statuses
    places: list[str]  # their "<account>/<region>" (tasks/batches.py place_of_record)
    ttl_s: int  # the records' lifetime
    now: float  # Unix time: the jobs' score in the pending index


# Accept many jobs (a batch's, a chunk at a time): each one's record and pending entry, and
# the fleet's counters of the records this script wrote where there were none (as ACCEPT:
# the same acceptance made again counts each job once).
# KEYS: pending index, status counts, record 1..n
# ARGV[1]: AcceptManyArguments
ACCEPT_MANY = (
    _TALLY
    + """
local a = cjson.decode(ARGV[1])
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then tally(a, i - 2) end
  redis.call('SET', KEYS[i], a.records[i - 2], 'EX', a.ttl_s)
  redis.call('ZADD', KEYS[1], a.now, a.jobs[i - 2])
end
count_tally(KEYS[2], 1)
return false
"""
)


class UnacceptManyArguments(TypedDict):
    jobs: list[str]  # the jobs' ids, one a record key (KEYS[3..])
    statuses: list[str]  # the statuses their acceptance counted
    places: list[str]  # their "<account>/<region>"


# Undo ACCEPT_MANY (a batch none of whose messages was published): each record and pending
# entry, and the counts of the records deleted here (a record not here was not counted here).
# KEYS: pending index, status counts, record 1..n
# ARGV[1]: UnacceptManyArguments
UNACCEPT_MANY = (
    _TALLY
    + """
local a = cjson.decode(ARGV[1])
for i = 3, #KEYS do
  if redis.call('DEL', KEYS[i]) == 1 then tally(a, i - 2) end
  redis.call('ZREM', KEYS[1], a.jobs[i - 2])
end
count_tally(KEYS[2], -1)
return false
"""
)


class UnacceptArguments(TypedDict):
    job: str  # the job's id
    queued: str  # JobStatus.QUEUED: a record found in any other status has run since
    status: str  # the status the acceptance counted
    place: str  # the job's "<account>/<region>"
    claim: NotRequired[str]  # with KEYS[4]: the claim the acceptance wrote there


# Undo an acceptance whose message could not be queued: only what it wrote, only if still so.
# KEYS: record, pending index, status counts[, idempotency key]
# ARGV[1]: UnacceptArguments
UNACCEPT = (
    _RECORD_IN
    + """
local a = cjson.decode(ARGV[1])
local stored = record_in(redis.call('GET', KEYS[1]))
if stored and stored['status'] == a.queued then
  redis.call('DEL', KEYS[1])
  redis.call('HINCRBY', KEYS[3], a.status, -1)
  redis.call('HINCRBY', KEYS[3] .. ':placed', a.place .. '/' .. a.status, -1)
end
redis.call('ZREM', KEYS[2], a.job)
if #KEYS == 4 and redis.call('GET', KEYS[4]) == a.claim then redis.call('DEL', KEYS[4]) end
return 1
"""
)


class ClaimGapsArguments(TypedDict):
    ttl_s: int  # a claim's lifetime
    now: float  # Unix time: a claiming job's score in the pending index
    jobs: list[str]  # the claiming job of each claim key, in order (one at least)


# Claim gaps for a reconcile pass's jobs: a gap whose claim names a job still in the pending
# index is held (that job will make the mirror, or fail, and then the gap is free again);
# any other claim (none, expired, or naming a job that finished) is taken, and the new job
# goes into the pending index in the same step, so no other claimer can take the gap from it
# before its record is written. A job whose record is then never written (the producer died)
# is dropped from the index by the lost-message repair, which frees its gap.
# KEYS: pending index, claim 1..n
# ARGV[1]: ClaimGapsArguments
# Returns for each claim '' (taken) or the id of the pending job that holds it.
CLAIM_GAPS = """
local a = cjson.decode(ARGV[1])
local out = {}
for i = 2, #KEYS do
  local job = a.jobs[i - 1]
  local holder = redis.call('GET', KEYS[i])
  if holder and holder ~= job and redis.call('ZSCORE', KEYS[1], holder) then
    out[i - 1] = holder
  else
    redis.call('SET', KEYS[i], job, 'EX', a.ttl_s)
    redis.call('ZADD', KEYS[1], a.now, job)
    out[i - 1] = ''
  end
end
return out
"""
