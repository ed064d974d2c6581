"""The queues dashboard: job queues kept in Redis and stream consumer groups."""

from __future__ import annotations

from .dsl import OK_FAIL, C, Dashboard, Row, T, q, sel, stat, ts

QV = 'queue=~"$queue"'

QUEUES = Dashboard(
    file="queues.json",
    uid="tierwatch-queues",
    title="tierwatch / Queues",
    description="Job queues kept in Redis (BullMQ, Celery, RQ, lists, streams): backlog, age, failures "
    "and stream consumer groups.",
    tiers="redis",
    extra_variables=(("queue", "Queue", 'label_values(tierwatch_queue_length{cluster=~"$cluster"}, queue)'),),
    rows=(
        Row(
            "Backlog",
            (
                ts(
                    "Backlog",
                    "Jobs waiting to be picked up per queue (cluster_queue:tierwatch_queue_backlog:sum).",
                    "short",
                    q(sel("cluster_queue:tierwatch_queue_backlog:sum", C, QV), "{{cluster}} {{queue}}"),
                    alerts=("QueueBacklogHigh", "QueueBacklogGrowing"),
                ),
                ts(
                    "Jobs by state",
                    "Jobs in each queue by state (read on the cluster's current master).",
                    "short",
                    q(
                        "max by (queue, state) ("
                        + sel("tierwatch_queue_length", 'tier="redis"', T, QV)
                        + ")",
                        "{{queue}} {{state}}",
                    ),
                ),
                ts(
                    "Oldest waiting job",
                    "Age of the oldest waiting job per queue, where it can be known.",
                    "s",
                    q(
                        sel("cluster_queue:tierwatch_queue_oldest_age_seconds:max", C, QV),
                        "{{cluster}} {{queue}}",
                    ),
                    alerts=("QueueOldestJobTooOld",),
                ),
                ts(
                    "Failed jobs",
                    "Jobs in the failed state per queue (BullMQ, RQ).",
                    "short",
                    q(sel("cluster_queue:tierwatch_queue_failed:max", C, QV), "{{cluster}} {{queue}}"),
                    alerts=("QueueFailedJobsRising",),
                ),
                stat(
                    "Queues readable",
                    "1 when the queue's keys could be read (0: wrong key type, no permission).",
                    "none",
                    q(sel("tierwatch_redis_queue_read_ok", 'tier="redis"', T, QV), "{{queue}}"),
                    mappings=OK_FAIL,
                ),
                stat(
                    "Paused queues",
                    "BullMQ queues that are paused (jobs wait until resumed).",
                    "none",
                    q(sel("tierwatch_redis_queue_paused", 'tier="redis"', T, QV), "{{queue}}"),
                    mappings=(("0", "running", "green"), ("1", "PAUSED", "orange")),
                ),
            ),
        ),
        Row(
            "Stream consumer groups",
            (
                ts(
                    "Undelivered entries",
                    "Stream entries not yet delivered to each consumer group.",
                    "short",
                    q(sel("tierwatch_redis_stream_group_lag", 'tier="redis"', T, QV), "{{queue}} {{group}}"),
                    alerts=("QueueStreamConsumersStalled",),
                ),
                ts(
                    "Pending entries",
                    "Entries delivered to each group's consumers but not acknowledged.",
                    "short",
                    q(
                        sel("tierwatch_redis_stream_group_pending", 'tier="redis"', T, QV),
                        "{{queue}} {{group}}",
                    ),
                ),
                ts(
                    "Oldest pending entry idle",
                    "How long each group's oldest unacknowledged entry has waited.",
                    "s",
                    q(
                        sel(
                            "tierwatch_redis_stream_group_oldest_pending_idle_seconds", 'tier="redis"', T, QV
                        ),
                        "{{queue}} {{group}}",
                    ),
                    alerts=("QueueStreamConsumersStalled",),
                ),
                ts(
                    "Consumers",
                    "Consumers in each group.",
                    "short",
                    q(
                        sel("tierwatch_redis_stream_group_consumers", 'tier="redis"', T, QV),
                        "{{queue}} {{group}}",
                    ),
                    alerts=("QueueStreamConsumersStalled",),
                ),
            ),
        ),
    ),
)
