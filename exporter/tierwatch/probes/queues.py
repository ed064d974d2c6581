"""Job-queue readers for the queues configured on a Redis cluster, read on its primary.

Every queue is read with a fixed, bounded set of O(1)/O(log n) commands (LLEN, ZCARD, ZCOUNT,
LINDEX, HMGET, XLEN, XINFO GROUPS, XPENDING/XRANGE with COUNT 1); never SCAN or KEYS. All queues
share one pipelined round trip for counts, plus one more for what the first one points at (the
oldest job's hash, the oldest entry of each stream group). A missing key is an empty queue.

Redis counts every one of these reads as a keyspace hit or miss, and an idle queue's keys mostly do
not exist: read every second, they would drag a shared cache's hit ratio down by themselves (the
demo's master showed 41 % at rest). So each round trip starts with an EXISTS per key it reads, and
the reads are counted in a :class:`LookupCount` the Redis probe subtracts from the server's counters.
A client's pipeline is executed without other clients' commands in between, so the EXISTS answers
hold for the reads that follow them.

Key layouts (``<p>`` is the queue's ``prefix``):

- bullmq (p = ``bull``): ``<p>:<q>:wait``/``active``/``paused`` lists (LPUSH, RPOPLPUSH: the
  oldest waiting job is at index -1); ``delayed``, ``prioritized``, ``waiting-children``,
  ``completed``, ``failed`` sorted sets; ``meta`` hash (``paused``); job hash ``<p>:<q>:<id>``
  with ``timestamp`` (ms) and ``delay`` (ms).
- celery (kombu, p = global_keyprefix, default empty): list ``<p><q>`` plus priority lists
  ``<p><q>\\x06\\x16{3,6,9}`` (LPUSH, BRPOP). Messages carry no enqueue time: no age.
- rq (p = ``rq``): list ``<p>:queue:<q>`` (RPUSH, LPOP: oldest at index 0); sorted sets
  ``<p>:wip:<q>`` (started), ``deferred``, ``scheduled``, ``canceled``, ``finished``, ``failed``
  (finished/failed scores are expiry times: entries already expired but not yet cleaned up by RQ
  are not counted, as RQ's own counts do not);
  job hash ``<p>:job:<id>`` with ``enqueued_at``.
- list: ``<p><q>`` (LLEN only).
- stream: ``<p><q>`` with consumer groups (at most MAX_STREAM_GROUPS are reported per stream).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from redis.exceptions import ResponseError

from ..clients.redis import pairs as _pairs
from ..clients.redis import text as _text
from ..config import QueueConfig
from ..metric_catalog import QUEUE_LENGTH, QUEUE_OLDEST_AGE, metric
from .base import Observation

Command = tuple[Any, ...]
MAX_STREAM_GROUPS = 20
CELERY_SEP = "\x06\x16"
CELERY_PRIORITIES = (3, 6, 9)

QUEUE_READ_OK = metric(
    "tierwatch_redis_queue_read_ok",
    "gauge",
    "1 if the queue's keys could be read (0: wrong key type, no permission, ...).",
    ("queue",),
    section="redis",
)
QUEUE_PAUSED = metric(
    "tierwatch_redis_queue_paused", "gauge", "BullMQ: 1 if the queue is paused.", ("queue",), section="redis"
)
STREAM_GROUPS = metric(
    "tierwatch_redis_stream_groups",
    "gauge",
    "Consumer groups of a stream queue (per-group series are limited to the first 20).",
    ("queue",),
    section="redis",
)
STREAM_GROUP_LAG = metric(
    "tierwatch_redis_stream_group_lag",
    "gauge",
    "Stream entries not yet delivered to the consumer group (XINFO GROUPS lag, Redis 7+).",
    ("queue", "group"),
    section="redis",
)
STREAM_GROUP_PENDING = metric(
    "tierwatch_redis_stream_group_pending",
    "gauge",
    "Entries delivered to the group's consumers but not acknowledged.",
    ("queue", "group"),
    section="redis",
)
STREAM_GROUP_CONSUMERS = metric(
    "tierwatch_redis_stream_group_consumers",
    "gauge",
    "Consumers in the group.",
    ("queue", "group"),
    section="redis",
)
STREAM_GROUP_PENDING_IDLE = metric(
    "tierwatch_redis_stream_group_oldest_pending_idle_seconds",
    "gauge",
    "Idle time of the group's oldest pending (delivered, unacknowledged) entry; 0 if none.",
    ("queue", "group"),
    section="redis",
)

STATES: dict[str, tuple[str, ...]] = {
    "bullmq": (
        "waiting",
        "active",
        "paused",
        "delayed",
        "prioritized",
        "waiting_children",
        "completed",
        "failed",
    ),
    "rq": ("queued", "started", "deferred", "scheduled", "canceled", "finished", "failed"),
    "celery": ("waiting",),
    "list": ("waiting",),
    "stream": ("entries",),
}


class QueueReader(Protocol):
    """Reads one queue in two phases: counts, then what the counts pointed at."""

    config: QueueConfig

    def first(self) -> list[Command]: ...

    def second(self, replies: list[Any]) -> list[Command]: ...

    def emit(self, first: list[Any], second: list[Any], obs: Observation, now: float) -> None: ...


def _count(reply: Any) -> int:
    """An integer reply; a ResponseError propagates (wrong type etc.)."""
    if isinstance(reply, ResponseError):
        raise reply
    return int(reply or 0)


def _key(config: QueueConfig, default_prefix: str, *parts: str) -> str:
    prefix = config.prefix if config.prefix is not None else default_prefix
    return ":".join((prefix, config.name, *parts)) if prefix else ":".join((config.name, *parts))


def _plain_key(config: QueueConfig) -> str:
    return f"{config.prefix or ''}{config.name}"


class BullMQReader:
    """BullMQ (v5/v6) queue."""

    # in STATES["bullmq"] order
    LISTS = ("wait", "active", "paused")
    ZSETS = ("delayed", "prioritized", "waiting-children", "completed", "failed")

    def __init__(self, config: QueueConfig):
        self.config = config

    def _k(self, part: str) -> str:
        return _key(self.config, "bull", part)

    def first(self) -> list[Command]:
        return [
            *(("LLEN", self._k(name)) for name in self.LISTS),
            *(("ZCARD", self._k(name)) for name in self.ZSETS),
            ("HGET", self._k("meta"), "paused"),
            ("LINDEX", self._k("wait"), -1),
        ]

    def _oldest_id(self, replies: list[Any]) -> str | None:
        tail = replies[-1]
        if tail is None or isinstance(tail, ResponseError):
            return None
        job_id = _text(tail)
        return None if job_id.startswith("0:") else job_id

    def second(self, replies: list[Any]) -> list[Command]:
        job_id = self._oldest_id(replies)
        return [] if job_id is None else [("HMGET", self._k(job_id), "timestamp", "delay")]

    def emit(self, first: list[Any], second: list[Any], obs: Observation, now: float) -> None:
        counts = [_count(reply) for reply in first[:8]]
        tail = first[-1]
        if tail is not None and not isinstance(tail, ResponseError) and _text(tail).startswith("0:"):
            counts[0] = max(0, counts[0] - 1)  # a BullMQ v4/v5 marker, not a job
        for state, value in zip(STATES["bullmq"], counts, strict=True):
            obs.add(QUEUE_LENGTH, value, self.config.name, state)
        paused = first[8]
        obs.add(QUEUE_PAUSED, 1.0 if paused is not None and _text(paused) == "1" else 0.0, self.config.name)
        age = 0.0
        if second and isinstance(second[0], list) and second[0][0] is not None:
            created_ms = float(second[0][0]) + float(second[0][1] or 0)
            age = max(0.0, now - created_ms / 1000.0)
        obs.add(QUEUE_OLDEST_AGE, age, self.config.name)


class RQReader:
    """RQ (1.x to 3.x) queue."""

    # in STATES["rq"] order: the queue list, these sorted sets, then the expiring ones
    ZSETS = (
        ("started", "wip"),
        ("deferred", "deferred"),
        ("scheduled", "scheduled"),
        ("canceled", "canceled"),
    )
    EXPIRING = (("finished", "finished"), ("failed", "failed"))

    def __init__(self, config: QueueConfig):
        self.config = config
        self.prefix = config.prefix if config.prefix is not None else "rq"
        self.now = 0.0

    def first(self) -> list[Command]:
        queue = f"{self.prefix}:queue:{self.config.name}"
        name = self.config.name
        return [
            ("LLEN", queue),
            *(("ZCARD", f"{self.prefix}:{key}:{name}") for _, key in self.ZSETS),
            *self._expiring(name),
            ("LINDEX", queue, 0),
        ]

    def _expiring(self, name: str) -> list[Command]:
        """ZCARD and the count of expired entries (score in [0, now]; -1 means kept forever)."""
        commands: list[Command] = []
        for _, key in self.EXPIRING:
            commands.append(("ZCARD", f"{self.prefix}:{key}:{name}"))
            commands.append(("ZCOUNT", f"{self.prefix}:{key}:{name}", 0, self.now))
        return commands

    def second(self, replies: list[Any]) -> list[Command]:
        head = replies[-1]
        if head is None or isinstance(head, ResponseError):
            return []
        return [("HGET", f"{self.prefix}:job:{_text(head)}", "enqueued_at")]

    def emit(self, first: list[Any], second: list[Any], obs: Observation, now: float) -> None:
        counts = [_count(reply) for reply in first[:5]]
        expiring = [_count(reply) for reply in first[5:9]]
        counts += [expiring[i] - expiring[i + 1] for i in range(0, 4, 2)]
        for state, value in zip(STATES["rq"], counts, strict=True):
            obs.add(QUEUE_LENGTH, value, self.config.name, state)
        age = 0.0
        if second and second[0] is not None and not isinstance(second[0], ResponseError):
            enqueued = datetime.fromisoformat(_text(second[0]).replace("Z", "+00:00"))
            if enqueued.tzinfo is None:
                enqueued = enqueued.replace(tzinfo=UTC)
            age = max(0.0, now - enqueued.timestamp())
        obs.add(QUEUE_OLDEST_AGE, age, self.config.name)


class CeleryReader:
    """Celery on the kombu Redis transport: one list per priority step."""

    def __init__(self, config: QueueConfig):
        self.config = config

    def first(self) -> list[Command]:
        key = _plain_key(self.config)
        return [("LLEN", key), *(("LLEN", f"{key}{CELERY_SEP}{pri}") for pri in CELERY_PRIORITIES)]

    def second(self, replies: list[Any]) -> list[Command]:
        return []

    def emit(self, first: list[Any], second: list[Any], obs: Observation, now: float) -> None:
        obs.add(QUEUE_LENGTH, sum(_count(reply) for reply in first), self.config.name, "waiting")


class ListReader:
    """A plain Redis list used as a queue."""

    def __init__(self, config: QueueConfig):
        self.config = config

    def first(self) -> list[Command]:
        return [("LLEN", _plain_key(self.config))]

    def second(self, replies: list[Any]) -> list[Command]:
        return []

    def emit(self, first: list[Any], second: list[Any], obs: Observation, now: float) -> None:
        obs.add(QUEUE_LENGTH, _count(first[0]), self.config.name, "waiting")


class StreamReader:
    """A Redis stream read by consumer groups."""

    def __init__(self, config: QueueConfig):
        self.config = config
        self.key = _plain_key(config)

    def first(self) -> list[Command]:
        return [("XLEN", self.key), ("XINFO", "GROUPS", self.key)]

    def _groups(self, replies: list[Any]) -> list[dict[str, Any]]:
        reply = replies[1]
        if isinstance(reply, ResponseError):
            if "no such key" in str(reply).lower():
                return []
            raise reply
        return [_pairs(group) for group in reply or []]

    def second(self, replies: list[Any]) -> list[Command]:
        commands: list[Command] = []
        for group in self._groups(replies)[:MAX_STREAM_GROUPS]:
            commands.append(("XPENDING", self.key, group["name"], "-", "+", 1))
            commands.append(("XRANGE", self.key, f"({_text(group['last-delivered-id'])}", "+", "COUNT", 1))
        return commands

    def emit(self, first: list[Any], second: list[Any], obs: Observation, now: float) -> None:
        name = self.config.name
        obs.add(QUEUE_LENGTH, _count(first[0]), name, "entries")
        groups = self._groups(first)
        obs.add(STREAM_GROUPS, len(groups), name)
        oldest = 0.0
        for index, group in enumerate(groups[:MAX_STREAM_GROUPS]):
            label = _text(group["name"])
            pending, undelivered = second[2 * index], second[2 * index + 1]
            if group.get("lag") is not None:
                obs.add(STREAM_GROUP_LAG, int(group["lag"]), name, label)
            obs.add(STREAM_GROUP_PENDING, int(group.get("pending") or 0), name, label)
            obs.add(STREAM_GROUP_CONSUMERS, int(group.get("consumers") or 0), name, label)
            idle = 0.0
            if isinstance(pending, list) and pending:
                idle = int(pending[0][2]) / 1000.0
            obs.add(STREAM_GROUP_PENDING_IDLE, idle, name, label)
            if isinstance(undelivered, list) and undelivered:
                oldest = max(oldest, now - _stream_id_ms(undelivered[0][0]) / 1000.0)
        obs.add(QUEUE_OLDEST_AGE, max(0.0, oldest), name)


def _stream_id_ms(entry_id: Any) -> int:
    return int(_text(entry_id).partition("-")[0])


READERS: dict[str, type[BullMQReader | RQReader | CeleryReader | ListReader | StreamReader]] = {
    "bullmq": BullMQReader,
    "rq": RQReader,
    "celery": CeleryReader,
    "list": ListReader,
    "stream": StreamReader,
}


def make_readers(queues: Sequence[QueueConfig], now: float) -> list[QueueReader]:
    """One reader per configured queue."""
    readers: list[QueueReader] = []
    for config in queues:
        reader = READERS[config.kind](config)
        if isinstance(reader, RQReader):
            reader.now = now
        readers.append(reader)
    return readers


class Roundtripper(Protocol):
    async def roundtrip(self, commands: Sequence[Command]) -> list[Any]: ...


def _split(replies: list[Any], sizes: list[int]) -> list[list[Any]]:
    out, start = [], 0
    for size in sizes:
        out.append(replies[start : start + size])
        start += size
    return out


class LookupCount:
    """The keyspace hits and misses Redis counted for the probe's own reads (since the server's
    counters last started)."""

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0

    def add(self, found: bool) -> None:
        if found:
            self.hits += 1
        else:
            self.misses += 1


def _read_key(command: Command) -> Any:
    """The key a queue-reading command looks up."""
    return command[2] if command[0] == "XINFO" else command[1]


def _looked_up(reply: Any) -> bool:
    """Whether Redis looked the key up (and counted it) for a command that got ``reply``: an ACL refusal
    or an unknown command is answered before any lookup; WRONGTYPE and "no such key" are after it."""
    if not isinstance(reply, ResponseError):
        return True
    message = str(reply)
    return not message.startswith(("NOPERM", "unknown command", "ERR unknown command"))


async def _counted_roundtrip(link: Roundtripper, commands: list[Command], lookups: LookupCount) -> list[Any]:
    """The replies to ``commands`` (each reads one key), sent after one EXISTS per key in the same
    round trip; adds to ``lookups`` what Redis counted for both (a read of an existing key is a hit)."""
    keys = list(dict.fromkeys(_read_key(command) for command in commands))
    replies = await link.roundtrip([*(("EXISTS", key) for key in keys), *commands])
    exists: dict[Any, bool] = {}
    for key, reply in zip(keys, replies[: len(keys)], strict=True):
        if isinstance(reply, int):
            exists[key] = bool(reply)
            lookups.add(bool(reply))
    answers = replies[len(keys) :]
    for command, reply in zip(commands, answers, strict=True):
        found = exists.get(_read_key(command))
        if found is not None and _looked_up(reply):
            lookups.add(found)
    return answers


async def read_queues(
    link: Roundtripper,
    queues: Sequence[QueueConfig],
    obs: Observation,
    now: float,
    lookups: LookupCount | None = None,
) -> None:
    """Read every configured queue in at most two round trips and add their samples to ``obs``;
    the keyspace hits and misses the reads cost are added to ``lookups``.

    A queue whose keys cannot be read (wrong type, no permission) gets read_ok 0 and no other
    samples; it does not fail the probe.
    """
    lookups = lookups if lookups is not None else LookupCount()
    readers = make_readers(queues, now)
    firsts = [reader.first() for reader in readers]
    first_replies = _split(
        await _counted_roundtrip(link, [c for cmds in firsts for c in cmds], lookups),
        [len(c) for c in firsts],
    )
    seconds: list[list[Command]] = []
    for reader, replies in zip(readers, first_replies, strict=True):
        try:
            seconds.append(reader.second(replies))
        except (ResponseError, ValueError, KeyError, TypeError):
            seconds.append([])
    flat = [c for cmds in seconds for c in cmds]
    second_replies = (
        _split(await _counted_roundtrip(link, flat, lookups), [len(c) for c in seconds])
        if flat
        else [[]] * len(readers)
    )
    for reader, first, second in zip(readers, first_replies, second_replies, strict=True):
        _emit_one(reader, first, second, obs, now)


def _emit_one(reader: QueueReader, first: list[Any], second: list[Any], obs: Observation, now: float) -> None:
    """Emit one queue's samples all-or-nothing, plus its read_ok gauge."""
    scratch = Observation()
    try:
        if any(isinstance(reply, ResponseError) for reply in second):
            raise next(reply for reply in second if isinstance(reply, ResponseError))
        reader.emit(first, second, scratch, now)
        ok = 1.0
    except (ResponseError, ValueError, KeyError, TypeError, IndexError):
        scratch.samples.clear()
        ok = 0.0
    obs.samples.extend(scratch.samples)
    obs.add(QUEUE_READ_OK, ok, reader.config.name)
