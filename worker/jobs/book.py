"""Durable delays without holding messages: the job book.

Every unit of work (fetch a call's legs, deliver a call to one sink) is a
member of one Redis sorted set scored by the time it is due. A pump in every
worker process claims due jobs and hands them to Celery; the job leaves the
book only when its run finishes it. A retry, a rate-limit wait or a parked
call just moves its score, so no Celery countdown ever sits unacknowledged in
a worker's memory.

Leases are fenced:

- A claim moves the job to its lease end and that score is the claim's
  *fencing token*, carried in the Celery message. A run starts only while the
  job's score still equals its token: a stale, repeated or restored message
  (the job was finished, re-claimed or rescheduled since) is a no-op, so a job
  never runs before it is due.
- A started run holds the job's lock, whose value is the token. Only that
  owner releases it (compare-and-delete in Lua). A heartbeat
  (:class:`worker.jobs.heartbeat.Heartbeat`) renews it while the run is alive;
  the task's hard time limit bounds the run.
- The pump never re-claims a job whose lock is alive; it looks again when the
  lock would end. A killed worker's lock is not renewed, so its work comes
  back within one lease.
- Deliveries to one sink have at most ``sink_concurrency`` claimed messages
  in flight across all workers, so a slow sink holds up only itself. A job
  that finds its sink at the cap waits on the sink's waiting list and is
  due again the moment a message of that sink finishes (or after
  ``cap_wait`` seconds, should that message's worker die).

One clock: every score, deadline and TTL is computed from Redis ``TIME``
inside Lua. Callers pass only relative delays, so a worker whose clock is off
behaves exactly like one in sync.

This module alone names the book's keys (:data:`JOBS`, :func:`job_key`,
:func:`lock_key`, :func:`slots_key`, :func:`waiting_key`); code outside ``worker.jobs`` calls the
book's methods.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from worker import scripts
from worker.keys import PREFIX
from worker.settings import DEFAULT_ACCOUNT

if TYPE_CHECKING:
    from redis import Redis
    from redis.client import Pipeline

log = logging.getLogger("exolegs.jobs")

FETCH = "fetch"
DELIVER = "deliver"

JOBS = f"{PREFIX}:jobs"  # sorted set: job id -> due time (Redis clock, unix seconds)

#: Wants a pipeline's results, once it has been sent (see :data:`Commit`).
Settle = Callable[[list[Any]], None]
#: Queues a run's own end (its job's :meth:`JobBook.finish`) on the ``MULTI``
#: that writes the run's result, so the two commit together. Whatever else it
#: queues there (the next job's opening, see :mod:`worker.tasks`) may want its
#: answer: it then returns a :data:`Settle`.
Commit = Callable[["Pipeline"], "Settle | None"]
#: Queues a run's first reads on the pipeline that begins it (see :meth:`JobBook.begin_all`).
Reads = Callable[["Pipeline"], object]


def execute_with(pipe: Pipeline, commit: Commit | None) -> None:
    """Queue ``commit`` last on ``pipe``, send it, and settle what the commit asked for."""
    settle = commit(pipe) if commit is not None else None
    results = pipe.execute()
    if settle is not None:
        settle(results)


def job_key(job_id: str) -> str:
    """Hash of a job's attempts, first/last attempt times, last error, force flag."""
    return f"{PREFIX}:job:{job_id}"


def lock_key(job_id: str) -> str:
    """The running copy's lock; its value is the fencing token of the claim it runs."""
    return f"{job_key(job_id)}:lock"


def slots_key(sink: str) -> str:
    """Sorted set of a sink's messages in flight (member -> expiry), for its concurrency cap."""
    return f"{PREFIX}:slots:{sink}"


def waiting_key(sink: str) -> str:
    """Sorted set of a sink's jobs waiting for a free slot (job id -> the due time they got)."""
    return f"{PREFIX}:slotwait:{sink}"


class Outcome(StrEnum):
    """What one run of one job came to."""

    DONE = "done"  # finished: out of the book
    STALE = "stale"  # the message is not the job's current claim (finished, re-claimed, waiting)
    BUSY = "busy"  # another copy of the same claim is running it
    DEFERRED = "deferred"  # waited for a rate-limit slot or a circuit; not an attempt
    PARKED = "parked"  # a configuration fault: waits behind its upstream's circuit
    RETRY = "retry"  # failed, will run again after a backoff
    DEAD = "dead"  # moved to the dead letters
    UNAVAILABLE = "unavailable"  # legs never became ready: delivered from the callback instead
    HANDED_BACK = "handed back"  # its batch ran out of time before it started; due again now


# Lua helpers shared by the scripts (Redis's clock, as seconds with microseconds).
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# The pump's claim. KEYS: jobs, broker queue. ARGV: lease s, max jobs, high
# water (messages), max wait in the queue (s), sink cap, batch size, job-key
# prefix, slots-key prefix, cap wait (s), waiting-key prefix.
# Returns {now, token, n, id1..idn, n, ...}: one group of jobs of one kind,
# account (and sink) per message to send. Jobs whose run is alive move to their lock's end; jobs
# of a sink at its cap move cap-wait seconds on and join the sink's waiting
# list (a freed slot brings them back sooner); the rest are claimed with
# the token now + lease.
_CLAIM = (
    _NOW
    + """
local lease = tonumber(ARGV[1])
local queued = redis.call('LLEN', KEYS[2])
if queued >= tonumber(ARGV[3]) then return {tostring(now)} end
if queued > 0 then
  local ok, msg = pcall(cjson.decode, redis.call('LINDEX', KEYS[2], -1))
  local at = ok and type(msg) == 'table' and type(msg['headers']) == 'table'
    and tonumber(msg['headers']['exolegs_claimed_at'])
  if at and now - at > tonumber(ARGV[4]) then return {tostring(now)} end
end
local token = string.format('%.6f', now + lease)
local cap = tonumber(ARGV[5])
local batch = tonumber(ARGV[6])
local limit = math.min(tonumber(ARGV[2]), (tonumber(ARGV[3]) - queued) * batch)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
local groups = {}
local order = {}
local free = {}
local room = {}
for _, id in ipairs(due) do
  local ttl = redis.call('PTTL', ARGV[7] .. id .. ':lock')
  if ttl > 0 then
    redis.call('ZADD', KEYS[1], 'XX', string.format('%.6f', now + ttl / 1000 + 0.01), id)
  else
    local head, rest = string.match(id, '^([^:]*):(.*)$')
    local kind = head and (string.match(head, '([^/]*)$')) or ''
    local sink = ''
    if kind == 'deliver' then sink = string.match(rest, '^[^:]*:(.*)$') or '' end
    local gk = (head or '') .. '|' .. sink
    local allowed = true
    if sink ~= '' and cap > 0 then
      if room[sink] == nil then
        local sk = ARGV[8] .. sink
        redis.call('ZREMRANGEBYSCORE', sk, '-inf', now)
        free[sink] = cap - redis.call('ZCARD', sk)
        room[sink] = free[sink] * batch
      end
      if room[sink] <= 0 then allowed = false else room[sink] = room[sink] - 1 end
    end
    if allowed then
      redis.call('ZADD', KEYS[1], 'XX', token, id)
      if not groups[gk] then
        groups[gk] = {sink = sink, ids = {}}
        table.insert(order, gk)
      end
      table.insert(groups[gk].ids, id)
    else
      local later = string.format('%.6f', now + tonumber(ARGV[9]))
      redis.call('ZADD', KEYS[1], 'XX', later, id)
      redis.call('ZADD', ARGV[10] .. sink, later, id)
    end
  end
end
local out = {tostring(now), token}
for _, gk in ipairs(order) do
  local g = groups[gk]
  local n = #g.ids
  local size = math.max(1, math.min(batch, math.floor(n / 4)))
  if g.sink ~= '' and cap > 0 then
    local slots = math.max(1, math.min(free[g.sink], math.ceil(n / size)))
    size = math.ceil(n / slots)
  end
  local start = 1
  while start <= n do
    local stop = math.min(n, start + size - 1)
    table.insert(out, stop - start + 1)
    for i = start, stop do table.insert(out, g.ids[i]) end
    if g.sink ~= '' and cap > 0 then
      redis.call('ZADD', ARGV[8] .. g.sink, now + lease, token .. ':' .. g.ids[start])
    end
    start = stop + 1
  end
end
return out
"""
)

# A message of a sink is done. KEYS: jobs, the sink's slots, its waiting list.
# ARGV: the slot's member, how many waiting jobs to wake. Frees the slot and
# makes that many of the sink's waiting jobs due now, each only if it still
# waits where the claim put it (finished, re-claimed or rescheduled jobs are
# left alone, so nothing runs before it is due).
_FREE_SLOT = (
    _NOW
    + """
redis.call('ZREM', KEYS[2], ARGV[1])
local waiting = redis.call('ZRANGE', KEYS[3], 0, tonumber(ARGV[2]) - 1, 'WITHSCORES')
local woken = 0
for i = 1, #waiting, 2 do
  local id = waiting[i]
  redis.call('ZREM', KEYS[3], id)
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) == tonumber(waiting[i + 1]) then
    redis.call('ZADD', KEYS[1], 'XX', string.format('%.6f', now), id)
    woken = woken + 1
  end
end
return woken
"""
)

# Booking. KEYS: jobs. ARGV: delay s, mode ('nx' new only, 'xx' move only,
# 'set' either), job ids... Returns how many were added or moved.
_SCHEDULE = (
    _NOW
    + """
local due = string.format('%.6f', now + math.max(0, tonumber(ARGV[1])))
local n = 0
for i = 3, #ARGV do
  if ARGV[2] == 'set' then
    n = n + redis.call('ZADD', KEYS[1], 'CH', due, ARGV[i])
  else
    n = n + redis.call('ZADD', KEYS[1], string.upper(ARGV[2]), 'CH', due, ARGV[i])
  end
end
return n
"""
)

# Starting a run. KEYS: jobs, job hash, lock, circuit, circuit's failure count.
# ARGV: job id, token, lease ms. Returns {-1} stale (the token is not the job's
# current claim), {0} busy (a copy of this claim runs it), else {attempt,
# force, circuit open, failures counted}.
_BEGIN = (
    """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return {-1} end
if not redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', tonumber(ARGV[3])) then return {0} end
"""
    + _NOW
    + """
local attempt = redis.call('HINCRBY', KEYS[2], 'attempts', 1)
redis.call('HSETNX', KEYS[2], 'first_attempt', string.format('%.3f', now))
redis.call('HSET', KEYS[2], 'last_attempt', string.format('%.3f', now))
local force = redis.call('HGET', KEYS[2], 'force') or ''
return {attempt, force, redis.call('EXISTS', KEYS[4]), redis.call('EXISTS', KEYS[5])}
"""
)

# Whether the run with token ARGV[2] owns the job: it holds the lock, or
# nobody does and its claim is still the current one.
_OWNS = """
local holder = redis.call('GET', KEYS[3])
local owns = holder == ARGV[2]
if not holder then
  local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
  owns = score ~= false and tonumber(score) == tonumber(ARGV[2])
end
"""

# Finishing. KEYS: jobs, job hash, lock. ARGV: job id, token. Out of the book
# with its state and lock, unless another claim's run holds the lock now
# (then that run finishes it). Returns 1 when finished here.
_FINISH = """
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
return 1
"""

# Handing a job back to wait. KEYS: jobs, job hash, lock. ARGV: job id, token,
# delay s, undo attempt ('1'), error text ('' none). Only the owner may.
_RELEASE = (
    _OWNS
    + """
if not owns then return 0 end
"""
    + _NOW
    + """
local due = string.format('%.6f', now + math.max(0, tonumber(ARGV[3])))
redis.call('ZADD', KEYS[1], 'XX', due, ARGV[1])
if ARGV[4] == '1' then redis.call('HINCRBY', KEYS[2], 'attempts', -1) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[2], 'last_error', ARGV[5]) end
if holder then redis.call('DEL', KEYS[3]) end
return 1
"""
)

# Heartbeat. ARGV: lease ms, n runs, (lock key, token) * n, m slots, (slots
# key, member) * m. Renews what still belongs to its owner; returns the
# number of runs whose lock was lost.
_RENEW = (
    _NOW
    + """
local lease = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local lost = 0
for i = 0, n - 1 do
  local key, token = ARGV[3 + 2 * i], ARGV[4 + 2 * i]
  if redis.call('GET', key) == token then redis.call('PEXPIRE', key, lease)
  else lost = lost + 1 end
end
local base = 3 + 2 * n
local m = tonumber(ARGV[base])
for i = 0, m - 1 do
  redis.call('ZADD', ARGV[base + 1 + 2 * i], 'XX', now + lease / 1000, ARGV[base + 2 + 2 * i])
end
return lost
"""
)

# Booking a job again from scratch (a dead letter's replay). KEYS: jobs, job
# hash. ARGV: job id, force ('1'). Due now, with a fresh attempt count.
_REQUEUE = (
    _NOW
    + """
redis.call('DEL', KEYS[2])
if ARGV[2] == '1' then redis.call('HSET', KEYS[2], 'force', '1') end
redis.call('ZADD', KEYS[1], string.format('%.6f', now), ARGV[1])
return 1
"""
)

# Members of a sorted set scored at least ARGV[1] seconds ago (Redis's clock).
_OLDER_THAN = (
    _NOW
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
"""
)


@dataclass(frozen=True)
class Started:
    """A run that may go ahead: its attempt number and what it needs to know."""

    attempt: int
    force: bool
    circuit_open: bool | None = False  # None: not known now, look before calling
    failing: bool = True  # its upstream has failures counted (a success must clear them)


def _account_prefix(account: str) -> str:
    """A job of an account other than ``default`` starts ``<account>/``: its credentials,
    rate limit, circuit and keys come from that account."""
    return "" if account == DEFAULT_ACCOUNT else f"{account}/"


def fetch_id(call_sid: str, account: str = DEFAULT_ACCOUNT) -> str:
    return f"{_account_prefix(account)}{FETCH}:{call_sid}"


def deliver_id(call_sid: str, sink: str, account: str = DEFAULT_ACCOUNT) -> str:
    return f"{_account_prefix(account)}{DELIVER}:{call_sid}:{sink}"


@dataclass(frozen=True)
class JobId:
    kind: str
    call_sid: str
    sink: str | None = None
    account: str = DEFAULT_ACCOUNT

    @classmethod
    def parse(cls, raw: str | bytes) -> JobId:
        text = raw.decode() if isinstance(raw, bytes) else raw
        head, _, rest = text.partition(":")
        account, _, kind = head.rpartition("/")
        account = account or DEFAULT_ACCOUNT
        if kind == DELIVER:
            call_sid, _, sink = rest.partition(":")
            return cls(kind, call_sid, sink, account)
        return cls(kind, rest, None, account)

    def __str__(self) -> str:
        if self.kind == DELIVER:
            return deliver_id(self.call_sid, self.sink or "", self.account)
        return fetch_id(self.call_sid, self.account)


@dataclass(frozen=True)
class Batch:
    """One message's worth of claimed jobs: same kind (and sink), one fencing token."""

    token: str
    jobs: tuple[JobId, ...]
    claimed_at: float

    @property
    def slot(self) -> str | None:
        """The member holding this message's place under its sink's concurrency cap."""
        first = self.jobs[0]
        return f"{self.token}:{first}" if first.kind == DELIVER else None


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


@dataclass
class JobBook:
    """The job book. Times passed in are relative delays in seconds, never clock readings."""

    redis: Redis
    lease_seconds: float = 120.0
    sink_concurrency: int = 0  # messages in flight per sink; 0 = no cap
    batch: int = 32  # jobs per message at most, under a backlog
    cap_wait: float = 2.0  # a job at its sink's cap, should no freed slot wake it sooner

    def __post_init__(self) -> None:
        self._claim = self.redis.register_script(_CLAIM)
        self._schedule = self.redis.register_script(_SCHEDULE)
        self._begin = self.redis.register_script(_BEGIN)
        self._finish = self.redis.register_script(_FINISH)
        self._release = self.redis.register_script(_RELEASE)
        self._renew = self.redis.register_script(_RENEW)
        self._requeue = self.redis.register_script(_REQUEUE)
        self._older_than = self.redis.register_script(_OLDER_THAN)
        self._free_slot = self.redis.register_script(_FREE_SLOT)

    @property
    def key(self) -> str:
        """The book's sorted set, for Lua elsewhere that must book atomically with its own keys."""
        return JOBS

    @property
    def lease_ms(self) -> int:
        return max(1, int(self.lease_seconds * 1000))

    # -------------------------------------------------------------- booking
    def schedule(self, job_id: str, delay: float = 0.0, *, replace: bool = False) -> bool:
        """Book a job ``delay`` seconds from now; False if already booked (unless ``replace``)."""
        mode = "set" if replace else "nx"
        return bool(self._schedule(keys=[JOBS], args=[max(0.0, delay), mode, job_id]))

    def schedule_many(
        self, job_ids: list[str], delay: float = 0.0, *, pipe: Pipeline | None = None
    ) -> None:
        """Book each job not booked yet, ``delay`` seconds from now (in ``pipe`` when given)."""
        if not job_ids:
            return
        args: list[Any] = [max(0.0, delay), "nx", *job_ids]
        if pipe is None:
            self._schedule(keys=[JOBS], args=args)
        else:
            scripts.queue(pipe, self._schedule, [JOBS], args)

    def reschedule(self, job_id: str, delay: float) -> bool:
        """Move a booked job, unfenced (an operator's or a test's nudge); False if not booked."""
        return bool(self._schedule(keys=[JOBS], args=[max(0.0, delay), "xx", job_id]))

    def pending(self, job_id: str) -> bool:
        return self.redis.zscore(JOBS, job_id) is not None

    def size(self) -> int:
        return int(self.redis.zcard(JOBS))

    # -------------------------------------------------------------- claiming
    def claim(
        self,
        limit: int = 200,
        *,
        queue: str = "",
        high_water: int = 1 << 30,
        max_wait: float | None = None,
    ) -> list[Batch]:
        """Claim due jobs, grouped into messages, each job fenced with the claim's token.

        Nothing is claimed while the broker ``queue`` holds ``high_water``
        messages or its oldest message has waited ``max_wait`` seconds
        (default: a quarter of the lease), so no message waits in the queue
        anywhere near its lease.
        """
        wait = self.lease_seconds / 4 if max_wait is None else max_wait
        raw = self._claim(
            keys=[JOBS, queue or f"{PREFIX}:no-queue"],
            args=[
                self.lease_seconds,
                limit,
                high_water,
                wait,
                self.sink_concurrency,
                self.batch,
                job_key(""),
                slots_key(""),
                self.cap_wait,
                waiting_key(""),
            ],
        )
        if len(raw) < 2:
            return []
        token = _text(raw[1])
        claimed_at = float(token) - self.lease_seconds
        batches = []
        n = 2
        while n < len(raw):
            count = int(raw[n])
            ids = tuple(JobId.parse(_text(r)) for r in raw[n + 1 : n + 1 + count])
            batches.append(Batch(token, ids, claimed_at))
            n += 1 + count
        return batches

    # -------------------------------------------------------------- running
    def begin(
        self, job_id: str, token: str, circuit: str | None = None, failures: str | None = None
    ) -> Started | Outcome:
        """Start the run of claim ``token``: :attr:`Outcome.STALE`, :attr:`Outcome.BUSY` or Started.

        A started run holds the job's lock (keep it alive with a heartbeat),
        its attempt is counted, and whether the ``circuit`` key of the
        upstream it will call exists (open) comes back with it, and whether
        its ``failures`` key does, all in the same round trip.
        """
        raw = self._begin(
            keys=self._begin_keys(job_id, circuit, failures), args=[job_id, token, self.lease_ms]
        )
        return self._started(raw, circuit, failures)

    def begin_all(
        self, token: str, runs: Sequence[tuple[str, str | None, str | None, Reads]]
    ) -> list[tuple[Started | Outcome, list[Any]]]:
        """:meth:`begin` for every job of one message, each with its first reads, in one round trip.

        ``runs`` holds (job id, circuit, failures, reads) per job; ``reads``
        queues the run's first reads, whose results come back with its begin.
        They must only read (or only extend TTLs): a stale or busy message
        makes them too. A job begun here whose turn never comes must be
        handed back with ``release(..., undo_attempt=True)``: its attempt was
        counted.
        """
        pipe = self.redis.pipeline(transaction=False)
        sizes = []
        for job_id, circuit, failures, reads in runs:
            keys = self._begin_keys(job_id, circuit, failures)
            scripts.queue(pipe, self._begin, keys, [job_id, token, self.lease_ms])
            before = len(pipe)
            reads(pipe)
            sizes.append(len(pipe) - before)
        results = iter(pipe.execute())
        out = []
        for (_, circuit, failures, _), size in zip(runs, sizes, strict=True):
            started = self._started(next(results), circuit, failures)
            out.append((started, [next(results) for _ in range(size)]))
        return out

    @staticmethod
    def _begin_keys(job_id: str, circuit: str | None, failures: str | None) -> list[str]:
        return [
            JOBS,
            job_key(job_id),
            lock_key(job_id),
            circuit or f"{PREFIX}:-",
            failures or f"{PREFIX}:-",
        ]

    @staticmethod
    def _started(raw: Any, circuit: str | None, failures: str | None) -> Started | Outcome:
        if int(raw[0]) < 0:
            return Outcome.STALE
        if int(raw[0]) == 0:
            return Outcome.BUSY
        return Started(
            int(raw[0]),
            _text(raw[1]) == "1",
            bool(circuit) and bool(raw[2]),
            failures is None or bool(raw[3]),
        )

    def finish(self, job_id: str, token: str, *, pipe: Pipeline | None = None) -> bool:
        """Done: out of the book with its state and lock; False if another claim's run owns it.

        With ``pipe``, only queued there, so the end of the job commits with
        what the run wrote in the same ``MULTI``; returns True.
        """
        job_keys = [JOBS, job_key(job_id), lock_key(job_id)]
        if pipe is not None:
            scripts.queue(pipe, self._finish, job_keys, [job_id, token])
            return True
        return bool(self._finish(keys=job_keys, args=[job_id, token]))

    def release(
        self,
        job_id: str,
        token: str,
        delay: float,
        *,
        undo_attempt: bool = False,
        error: str | None = None,
    ) -> bool:
        """The owner hands the job back, due ``delay`` seconds from now; False if not the owner.

        ``undo_attempt`` for a run that only waited (a token, a circuit);
        ``error`` is kept as the job's last error. Also hands back a claimed
        job whose run never started (its batch ran out of time, or its sink
        was at its cap).
        """
        return bool(
            self._release(
                keys=[JOBS, job_key(job_id), lock_key(job_id)],
                args=[
                    job_id,
                    token,
                    max(0.0, delay),
                    "1" if undo_attempt else "",
                    (error or "")[:2000],
                ],
            )
        )

    def renew(self, runs: list[tuple[str, str]], slots: list[tuple[str, str]]) -> int:
        """Heartbeat: extend each (job id, token) run's lock and (sink, member) slot by a lease.

        Returns how many runs had lost their lock (a pause longer than the lease).
        """
        args: list[Any] = [self.lease_ms, len(runs)]
        for job_id, token in runs:
            args += [lock_key(job_id), token]
        args.append(len(slots))
        for sink, member in slots:
            args += [slots_key(sink), member]
        return int(self._renew(keys=[], args=args))

    def free_slot(self, sink: str, member: str) -> int:
        """A message of ``sink`` is done: its place under the cap is free.

        Up to a message's worth of the sink's jobs that were waiting for a
        slot are due now; returns how many.
        """
        return int(
            self._free_slot(
                keys=[JOBS, slots_key(sink), waiting_key(sink)], args=[member, self.batch]
            )
        )

    # -------------------------------------------------------------- state
    def now(self) -> float:
        """Redis's clock, the book's only clock."""
        seconds, micros = self.redis.time()
        return float(seconds) + micros / 1e6

    def backlog(self, sample: int = 500) -> dict[str, Any]:
        """Jobs booked, overdue (due now or earlier), the oldest overdue's age, and retrying.

        ``retrying`` counts jobs that have failed at least once among the first
        ``sample`` booked jobs (a lower bound when the book is larger).
        """
        now = self.now()
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(JOBS)
        pipe.zcount(JOBS, "-inf", now)
        pipe.zrange(JOBS, 0, 0, withscores=True)
        pipe.zrange(JOBS, 0, sample - 1)
        booked, overdue, first, ids = pipe.execute()
        pipe = self.redis.pipeline(transaction=False)
        for raw in ids:
            pipe.hexists(job_key(_text(raw)), "last_error")
        retrying = sum(1 for failed in pipe.execute() if failed) if ids else 0
        oldest = now - float(first[0][1]) if first and float(first[0][1]) <= now else 0.0
        return {
            "booked": int(booked),
            "waiting": int(booked) - int(overdue),
            "overdue": int(overdue),
            "oldest_overdue_seconds": round(oldest, 3),
            "retrying": retrying,
            "retrying_sampled": len(ids) < int(booked),
        }

    def describe(self, job_id: str) -> dict[str, Any] | None:
        """A booked job's due time (Redis's clock) and attempts; None when it is not booked."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zscore(JOBS, job_id)
        pipe.hgetall(job_key(job_id))
        score, raw = pipe.execute()
        if score is None:
            return None
        info = {_text(k): _text(v) for k, v in raw.items()}
        return {
            "job_id": job_id,
            "due_at": float(score),
            "attempts": int(info.get("attempts", 0) or 0),
            "last_error": info.get("last_error"),
        }

    def info(self, job_id: str) -> dict[str, str]:
        raw = self.redis.hgetall(job_key(job_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    # -------------------------------------------------------------- replays
    def requeue(self, job_id: str, *, force: bool = False) -> None:
        """Book a job again, due now, with a fresh attempt count; ``force`` ignores the ledger."""
        self._requeue(keys=[JOBS, job_key(job_id)], args=[job_id, "1" if force else ""])

    def older_than(self, zset_key: str, seconds: float) -> list[str]:
        """Members of a time-scored sorted set scored at least ``seconds`` ago (Redis's clock)."""
        return [_text(r) for r in self._older_than(keys=[zset_key], args=[max(0.0, seconds)])]
