"""Queue readers, checked against jobs enqueued by the real client libraries (BullMQ, RQ, Celery)."""

from __future__ import annotations

import asyncio
import json
import operator
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from celery import Celery
from rq import Queue, SimpleWorker
from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)

from tierwatch.probes.base import Observation
from tierwatch.probes.queues import STATES
from tierwatch.probes.redis import RedisProbe
from tierwatch_lab.stack import Stack
from tierwatch_lab.stack.redis import RedisServer, start_redis

from redis_fixtures import (
    bullmq_script,
    make_cluster,
    probe_once,
    redis_stack,
    samples_named,
    target_info,
    value,
)

__all__ = ["bullmq_script", "redis_stack"]  # fixtures, imported for pytest


def _probe(server: RedisServer, *queues: dict[str, str]) -> Observation:
    return probe_once(target_info(make_cluster([server], queues=queues), server.name))


def _lengths(obs: Observation, queue: str) -> dict[str, float]:
    return {
        labels[1]: v
        for labels, v in samples_named(obs, "tierwatch_queue_length").items()
        if labels[0] == queue
    }


def test_bullmq_counts_match_bullmq(redis_stack: Stack, bullmq_script: Path) -> None:
    a = start_redis(redis_stack, "redis-a")
    run = subprocess.run(
        ["node", str(bullmq_script), str(a.port), "emails"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    reported = json.loads(run.stdout)
    obs = _probe(a, {"name": "emails", "kind": "bullmq"})
    lengths = _lengths(obs, "emails")
    assert set(lengths) == set(STATES["bullmq"])
    theirs = {
        ("waiting_children" if k == "waiting-children" else k): v for k, v in reported["counts"].items()
    }
    assert {k: lengths[k] for k in theirs} == theirs
    assert theirs == {
        "waiting": 4,
        "active": 1,
        "delayed": 5,
        "prioritized": 2,
        "waiting_children": 0,
        "completed": 2,
        "failed": 3,
    }
    assert lengths["paused"] == 0  # BullMQ 5+ keeps a paused queue's jobs in wait
    assert value(obs, "tierwatch_redis_queue_paused", "emails") == 1 == int(reported["paused"])
    expected_age = time.time() - reported["oldest"] / 1000
    assert abs(value(obs, "tierwatch_queue_oldest_age_seconds", "emails") - expected_age) < 2  # type: ignore[operator]
    assert value(obs, "tierwatch_redis_queue_read_ok", "emails") == 1


class BurstWorker(SimpleWorker):
    """rq's SimpleWorker without its command channel: at teardown rq stops that channel's pubsub thread,
    which sits up to 60 s in a get_message(timeout=60) on a loaded machine (the test took 60 s in CI,
    under a second alone). The channel carries worker commands; the counts do not depend on it."""

    def subscribe(self) -> None:
        self.pubsub_thread = None

    def unsubscribe(self) -> None:
        return None


def test_rq_counts_match_rq(redis_stack: Stack) -> None:
    a = start_redis(redis_stack, "redis-a")
    conn = a.client(decode_responses=False)
    queue = Queue("default", connection=conn)
    queue.enqueue(operator.add, 1, 2)
    queue.enqueue(operator.truediv, 1, 0)
    queue.enqueue(operator.truediv, 2, 0)
    BurstWorker([queue], connection=conn).work(burst=True)
    first = queue.enqueue(operator.add, 1, 1)
    waiting = [queue.enqueue(operator.add, i, i) for i in range(3)]
    waiting[-1].cancel()
    queue.enqueue(operator.add, 5, 5, depends_on=first)
    for _ in range(2):
        queue.enqueue_in(timedelta(hours=1), operator.add, 1, 1)
    theirs = {
        "queued": queue.count,
        "started": StartedJobRegistry(queue=queue).count,
        "deferred": DeferredJobRegistry(queue=queue).count,
        "scheduled": ScheduledJobRegistry(queue=queue).count,
        "finished": FinishedJobRegistry(queue=queue).count,
        "failed": FailedJobRegistry(queue=queue).count,
        "canceled": CanceledJobRegistry(queue=queue).count,
    }
    assert theirs == {
        "queued": 3,
        "started": 0,
        "deferred": 1,
        "scheduled": 2,
        "finished": 1,
        "failed": 2,
        "canceled": 1,
    }
    obs = _probe(a, {"name": "default", "kind": "rq"})
    assert _lengths(obs, "default") == theirs
    assert first.enqueued_at is not None
    expected_age = time.time() - first.enqueued_at.timestamp()
    assert abs(value(obs, "tierwatch_queue_oldest_age_seconds", "default") - expected_age) < 2  # type: ignore[operator]


def test_celery_counts_match_celery(redis_stack: Stack) -> None:
    a = start_redis(redis_stack, "redis-a")
    app = Celery("tierwatch_test", broker=f"redis://{a.host}:{a.port}/0")
    for i in range(3):
        app.send_task("tasks.plain", args=(i,), queue="celery")
    for i in range(2):
        app.send_task("tasks.urgent", args=(i,), queue="celery", priority=5)
    app.send_task("tasks.later", queue="celery", countdown=3600)
    with app.connection_for_write() as connection, connection.channel() as channel:
        theirs = channel.client.llen("celery") + channel.client.llen("celery\x06\x163")
    app.close()
    assert theirs == 6
    obs = _probe(a, {"name": "celery", "kind": "celery"})
    assert _lengths(obs, "celery") == {"waiting": 6}
    assert value(obs, "tierwatch_queue_oldest_age_seconds", "celery") is None  # not knowable


def test_stream_groups(redis_stack: Stack) -> None:
    a = start_redis(redis_stack, "redis-a")
    client = a.client()
    start_ms = int(time.time() * 1000) - 60_000
    ids = [client.xadd("events", {"n": i}, id=f"{start_ms + i * 1000}-0") for i in range(5)]
    client.xgroup_create("events", "audit", id="$", entries_read=5)  # sees only what follows
    ids += [client.xadd("events", {"n": i}, id=f"{start_ms + i * 1000}-0") for i in range(5, 10)]
    client.xgroup_create("events", "mailer", id="0")
    client.xgroup_create("events", "legacy", id=ids[7])  # Redis cannot tell this group's lag
    client.xreadgroup("mailer", "worker-1", {"events": ">"}, count=4)
    client.xack("events", "mailer", ids[0])
    obs = _probe(a, {"name": "events", "kind": "stream"})
    assert _lengths(obs, "events") == {"entries": 10}
    assert value(obs, "tierwatch_redis_stream_groups", "events") == 3
    assert samples_named(obs, "tierwatch_redis_stream_group_lag") == {
        ("events", "mailer"): 6,
        ("events", "audit"): 5,
    }
    assert samples_named(obs, "tierwatch_redis_stream_group_pending") == {
        ("events", "mailer"): 3,
        ("events", "audit"): 0,
        ("events", "legacy"): 0,
    }
    assert samples_named(obs, "tierwatch_redis_stream_group_consumers") == {
        ("events", "mailer"): 1,
        ("events", "audit"): 0,
        ("events", "legacy"): 0,
    }
    (idle_ms,) = [e["time_since_delivered"] for e in client.xpending_range("events", "mailer", "-", "+", 1)]
    idle = value(obs, "tierwatch_redis_stream_group_oldest_pending_idle_seconds", "events", "mailer")
    assert idle is not None and abs(idle - idle_ms / 1000) < 1
    assert value(obs, "tierwatch_redis_stream_group_oldest_pending_idle_seconds", "events", "audit") == 0
    # mailer's first undelivered entry is the 5th (t0 + 4 s): the oldest the groups have not seen
    expected = time.time() - (start_ms + 4000) / 1000
    assert abs(value(obs, "tierwatch_queue_oldest_age_seconds", "events") - expected) < 2  # type: ignore[operator]


def test_missing_keys_are_empty_and_bad_keys_do_not_fail_the_probe(redis_stack: Stack) -> None:
    a = start_redis(redis_stack, "redis-a")
    client = a.client()
    client.set("jobs", "not a list")
    client.rpush("work", *range(7))
    queues = [
        {"name": "emails", "kind": "bullmq"},
        {"name": "default", "kind": "rq"},
        {"name": "celery", "kind": "celery"},
        {"name": "events", "kind": "stream"},
        {"name": "work", "kind": "list"},
        {"name": "jobs", "kind": "list"},
    ]
    obs = _probe(a, *queues)
    assert obs.role == "primary"
    for queue in ("emails", "default", "celery", "events"):
        kind = next(q["kind"] for q in queues if q["name"] == queue)
        assert _lengths(obs, queue) == dict.fromkeys(STATES[kind], 0.0)
        assert value(obs, "tierwatch_redis_queue_read_ok", queue) == 1
    assert _lengths(obs, "work") == {"waiting": 7}
    assert value(obs, "tierwatch_redis_queue_read_ok", "jobs") == 0
    assert _lengths(obs, "jobs") == {}


def test_custom_prefixes(redis_stack: Stack) -> None:
    a = start_redis(redis_stack, "redis-a")
    client = a.client()
    client.lpush("myapp:emails:wait", "1", "2")
    client.rpush("jobs:rq:queue:reports", "x")
    obs = _probe(
        a,
        {"name": "emails", "kind": "bullmq", "prefix": "myapp"},
        {"name": "reports", "kind": "rq", "prefix": "jobs:rq"},
    )
    assert _lengths(obs, "emails")["waiting"] == 2
    assert _lengths(obs, "reports")["queued"] == 1
    assert sys.version_info >= (3, 11)


def test_the_probes_own_queue_reads_are_not_counted_as_cache_lookups(
    redis_stack: Stack, bullmq_script: Path
) -> None:
    """The queue reads look up keys (most missing on an idle queue); Redis counts them as keyspace hits
    and misses. The exported cache counters leave them out exactly, so only the clients' lookups move
    them, and they start again with the server's counters (CONFIG RESETSTAT)."""
    a = start_redis(redis_stack, "redis-a")
    run = subprocess.run(
        ["node", str(bullmq_script), str(a.port), "emails"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    client = a.client()
    client.xadd("events", {"n": 1})
    client.xgroup_create("events", "mailer", id="0")
    client.set("jobs", "not a list")  # read_ok 0: a WRONGTYPE reply is still a lookup
    queues = [
        {"name": "emails", "kind": "bullmq"},  # keys that exist and keys that do not
        {"name": "default", "kind": "rq"},  # every key missing
        {"name": "events", "kind": "stream"},  # a second round trip (XPENDING, XRANGE)
        {"name": "jobs", "kind": "list"},
    ]
    info = target_info(make_cluster([a], queues=queues), a.name)

    def counters(obs: Observation) -> tuple[float, float]:
        return value(obs, "tierwatch_cache_hits_total"), value(obs, "tierwatch_cache_misses_total")  # type: ignore[return-value]

    def raw() -> tuple[int, int]:
        stats = a.info("stats")
        return stats["keyspace_hits"], stats["keyspace_misses"]

    async def main() -> None:
        probe = RedisProbe(info)
        try:
            first = counters(await probe.probe())
            raw_before = raw()
            for _ in range(5):
                assert counters(await probe.probe()) == first  # nobody else looked anything up
            hits, misses = raw()
            assert hits > raw_before[0] and misses > raw_before[1]  # Redis did count the reads
            client.get("jobs")  # a client's hit
            client.get("no-such-key")  # and a miss
            client.get("no-such-key-either")
            assert counters(await probe.probe()) == (first[0] + 1, first[1] + 2)
            client.config_resetstat()
            after_reset = counters(await probe.probe())
            assert after_reset <= (first[0] + 1, first[1] + 2)  # started again with the server's
            client.get("no-such-key")
            assert counters(await probe.probe()) == (after_reset[0], after_reset[1] + 1)
        finally:
            await probe.close()

    asyncio.run(main())
