"""Redis persistence (data safety): RDB snapshots and the append-only file, from ``INFO persistence``
and ``CONFIG GET save``.

Few series per target: the last-save time only where RDB snapshots are configured (``save`` is not
empty, so its age means something), the AOF results only where AOF is enabled.
"""

from __future__ import annotations

from typing import Any

from ..metric_catalog import metric
from .base import Observation

Command = tuple[Any, ...]
# Whether RDB snapshots are scheduled: INFO does not say. Asked in the probe's round trip, dropped
# with the other CONFIG GET once the server refuses it.
SAVE_CONFIG: Command = ("CONFIG", "GET", "save")

RDB_OK = metric(
    "tierwatch_redis_rdb_last_bgsave_ok",
    "gauge",
    "1 if the last RDB background save succeeded, else 0.",
    section="redis",
)
RDB_LAST_SAVE = metric(
    "tierwatch_redis_rdb_last_save_timestamp_seconds",
    "gauge",
    "Unix time (the server's clock) of the last successful RDB save (rdb_last_save_time); only where "
    "RDB snapshots are configured (CONFIG GET save is not empty).",
    section="redis",
)
AOF_OK = metric(
    "tierwatch_redis_aof_last_write_ok",
    "gauge",
    "1 if the last AOF write succeeded, else 0; only where AOF is enabled.",
    section="redis",
)
AOF_REWRITE_OK = metric(
    "tierwatch_redis_aof_last_rewrite_ok",
    "gauge",
    "1 if the last AOF rewrite (BGREWRITEAOF) succeeded, else 0; only where AOF is enabled.",
    section="redis",
)


def observe_persistence(fields: dict[str, str], obs: Observation) -> None:
    """The RDB and AOF results of ``INFO persistence``."""
    status = fields.get("rdb_last_bgsave_status")
    if status is not None:
        obs.add(RDB_OK, 1.0 if status == "ok" else 0.0)
    if fields.get("aof_enabled") == "1":
        obs.add(AOF_OK, 1.0 if fields.get("aof_last_write_status") == "ok" else 0.0)
        obs.add(AOF_REWRITE_OK, 1.0 if fields.get("aof_last_bgrewrite_status") == "ok" else 0.0)


def save_configured(reply: Any) -> bool | None:
    """Whether ``CONFIG GET save`` shows snapshot points (a server without the setting: no); None when
    the reply is not a CONFIG answer (an error: the command is refused)."""
    if isinstance(reply, dict):
        pairs = list(reply.items())
    elif isinstance(reply, list) and len(reply) % 2 == 0:
        pairs = list(zip(reply[::2], reply[1::2], strict=True))
    else:
        return None
    for key, value in pairs:
        name = key.decode() if isinstance(key, bytes) else str(key)
        if name == "save":
            text = value.decode() if isinstance(value, bytes) else str(value)
            return bool(text.strip())
    return False


def observe_last_save(fields: dict[str, str], configured: bool, obs: Observation) -> None:
    """The last successful RDB save's time, where snapshots are configured."""
    last = fields.get("rdb_last_save_time", "")
    if configured and last.isdigit():
        obs.add(RDB_LAST_SAVE, float(last))
