"""The Lua scripts that write job records: each one atomic step, one round trip.

tasks/store.py runs them; they live here so each can be read whole, beside its arguments.
"""

# Move one registered job from its old status to `new` (never out of a terminal one), then
# count it done and stamp the batch's end when the last job finishes. A job the batch did
# not register (a stranger naming the batch) moves nothing and creates no key.
_TRANSITION = """
local function transition(statuses, counts, batch, running, batch_id, job, new, now, terminal,
                          placed, placed_counts)
  local old = redis.call('HGET', statuses, job)
  if not old or old == new or terminal[old] then return end
  redis.call('HSET', statuses, job, new)
  redis.call('HINCRBY', counts, old, -1)
  redis.call('HINCRBY', counts, new, 1)
  -- A batch spanning several accounts or Regions: the job's (account/region), fixed at
  -- acceptance, and its counts by (account/region/status).
  local where = placed and redis.call('HGET', placed, job)
  if where then
    redis.call('HINCRBY', placed_counts, where .. '/' .. old, -1)
    redis.call('HINCRBY', placed_counts, where .. '/' .. new, 1)
  end
  if terminal[new] then
    local done = redis.call('HINCRBY', batch, 'done', 1)
    if done >= tonumber(redis.call('HGET', batch, 'total') or '0') then
      redis.call('HSET', batch, 'finished_at', now)
      redis.call('SREM', running, batch_id)
    end
  end
end
"""

# One step of a job, as a worker takes it, with the fleet's counters (what /metrics reads).
# One script, one round trip: a pipeline of scripts would cost redis-py a SCRIPT EXISTS round
# trip each time.
# KEYS: record, pending index, job lease, status counts, failures by code, durations
#       [, batch statuses, batch counts, batch record, running batches, batch placements,
#       batch counts by placement]
# ARGV: step (start|save|finish), record JSON, ttl, job id, lease token, lease ms, status,
#       now, terminal statuses, queued state, finished state, the record's state (as Celery's
#       meta spells them), error code, seconds since submission, duration buckets, batch id,
#       the worker's account ('' for the default one), Region and queue, then the job's
#       account, Region, role ARN and queue ('' for none) as the record written says
# Returns {verdict[, current record]}:
#   busy          another worker holds the job's lease (a copy is running): nothing written
#   done          the job already finished: nothing written
#   elsewhere     (start) this worker cannot act where the job runs: nothing written, the
#                 stored record returned if there is one. A job runs on any worker reading
#                 the queue that carries it (the accepting fleet's: each assumes a job's
#                 role, and its own credentials serve any Region); one without a role must
#                 also be in the worker's own account. The stored record decides (the one
#                 written here, for a job sent with no record); records written before
#                 queues must match the worker's account and Region; with no Region, anywhere
#   not-in-batch  (start) the batch names a batch that did not register this job
#   resume        (start) the job ran before (a redelivery): lease taken, record returned so
#                 the worker carries on from it
#   stored        written
STEP = (
    _TRANSITION
    + """
local step, job, token, status = ARGV[1], ARGV[4], ARGV[5], ARGV[7]
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= token then return {'busy'} end
local current = redis.call('GET', KEYS[1])
local meta = current and cjson.decode(current)
if meta and meta['status'] == ARGV[11] then
  if holder then redis.call('DEL', KEYS[3]) end
  redis.call('ZREM', KEYS[2], job)
  return {'done', current}
end
if step == 'start' then
  local account, region, role, queue = ARGV[20], ARGV[21], ARGV[22], ARGV[23]
  local accepted = meta and meta['result']
  if type(accepted) == 'table' then
    local function text(value) if type(value) == 'string' then return value end return '' end
    account, region = text(accepted['account_id']), text(accepted['region'])
    role, queue = text(accepted['role_arn']), text(accepted['queue'])
  end
  if region ~= '' then
    local here
    if queue ~= '' then here = queue == ARGV[19] and (role ~= '' or account == ARGV[17]) else
      here = account == ARGV[17] and region == ARGV[18]  -- a record from before queues
    end
    if not here then
      if current then return {'elsewhere', current} end
      return {'elsewhere'}
    end
  end
  if #KEYS >= 10 and redis.call('HEXISTS', KEYS[7], job) == 0 then return {'not-in-batch'} end
  if meta and meta['status'] ~= ARGV[10] then
    redis.call('SET', KEYS[3], token, 'PX', ARGV[6])
    return {'resume', current}
  end
end
if step == 'finish' then
  if holder then redis.call('DEL', KEYS[3]) end
  redis.call('ZREM', KEYS[2], job)
else
  redis.call('SET', KEYS[3], token, 'PX', ARGV[6])
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
redis.call('PUBLISH', KEYS[1], ARGV[2])
if not meta or meta['status'] ~= ARGV[12] then
  redis.call('HINCRBY', KEYS[4], status, 1)
  local place = ARGV[20] ~= '' and ARGV[20] or 'default'
  redis.call('HINCRBY', KEYS[4] .. ':placed', place .. '/' .. ARGV[21] .. '/' .. status, 1)
  if ARGV[13] ~= '' then redis.call('HINCRBY', KEYS[5], ARGV[13], 1) end
  if ARGV[14] ~= '' then
    local seconds, bucket = tonumber(ARGV[14]), '+Inf'
    for bound in string.gmatch(ARGV[15], '[^,]+') do
      if seconds <= tonumber(bound) then bucket = bound break end
    end
    redis.call('HINCRBY', KEYS[6], bucket, 1)
    redis.call('HINCRBY', KEYS[6], 'count', 1)
    redis.call('HINCRBYFLOAT', KEYS[6], 'sum', ARGV[14])
  end
end
if #KEYS >= 10 then
  local terminal = {}
  for each in string.gmatch(ARGV[9], '[^,]+') do terminal[each] = true end
  transition(KEYS[7], KEYS[8], KEYS[9], KEYS[10], ARGV[16], job, status, ARGV[8], terminal,
             KEYS[11], KEYS[12])
end
return {'stored'}
"""
)

# Accept a job: its idempotency claim (if it has a key), its record and its pending entry,
# all or nothing. Returns nil when accepted, else the claim that was there first.
# KEYS: record, pending index, status counts[, idempotency key]
# ARGV: record JSON, ttl, job id, now, claim, status, the job's "<account>/<region>"
ACCEPT = """
if #KEYS == 4 then
  if not redis.call('SET', KEYS[4], ARGV[5], 'NX', 'EX', ARGV[2]) then
    return redis.call('GET', KEYS[4])
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
redis.call('HINCRBY', KEYS[3], ARGV[6], 1)
redis.call('HINCRBY', KEYS[3] .. ':placed', ARGV[7] .. '/' .. ARGV[6], 1)
return false
"""

# Undo an acceptance whose message could not be queued: only what it wrote, only if still so.
# KEYS: record, pending index, status counts[, idempotency key]
# ARGV: job id, claim, the queued state, status, the job's "<account>/<region>"
UNACCEPT = """
local current = redis.call('GET', KEYS[1])
if current and cjson.decode(current)['status'] == ARGV[3] then
  redis.call('DEL', KEYS[1])
  redis.call('HINCRBY', KEYS[3], ARGV[4], -1)
  redis.call('HINCRBY', KEYS[3] .. ':placed', ARGV[5] .. '/' .. ARGV[4], -1)
end
redis.call('ZREM', KEYS[2], ARGV[1])
if #KEYS == 4 and redis.call('GET', KEYS[4]) == ARGV[2] then redis.call('DEL', KEYS[4]) end
return 1
"""

# Claim gaps for a reconcile pass's jobs: a gap whose claim names a job still in the pending
# index is held (that job will make the mirror, or fail, and then the gap is free again);
# any other claim (none, expired, or naming a job that finished) is taken, and the new job
# goes into the pending index in the same step, so no other claimer can take the gap from it
# before its record is written. A job whose record is then never written (the producer died)
# is dropped from the index by the lost-message repair, which frees its gap.
# KEYS: pending index, claim 1..n
# ARGV: ttl, now, job id 1..n
# Returns for each claim '' (taken) or the id of the pending job that holds it.
CLAIM_GAPS = """
local out = {}
for i = 2, #KEYS do
  local job = ARGV[i + 1]
  local holder = redis.call('GET', KEYS[i])
  if holder and holder ~= job and redis.call('ZSCORE', KEYS[1], holder) then
    out[i - 1] = holder
  else
    redis.call('SET', KEYS[i], job, 'EX', ARGV[1])
    redis.call('ZADD', KEYS[1], ARGV[2], job)
    out[i - 1] = ''
  end
end
return out
"""
