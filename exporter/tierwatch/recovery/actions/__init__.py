"""Recovery actions, one module each, looked up by name."""

from __future__ import annotations

import importlib

from .base import Action, ActionContext, AlertRef, Outcome

ACTION_CLASSES: dict[str, str] = {
    "redis_failover": "tierwatch.recovery.actions.redis_failover:RedisFailover",
    "pg_promote": "tierwatch.recovery.actions.pg_promote:PgPromote",
    "restart_instance": "tierwatch.recovery.actions.restart:RestartInstance",
    "shift_traffic": "tierwatch.recovery.actions.traffic:ShiftTraffic",
    "regional_failover": "tierwatch.recovery.actions.traffic:RegionalFailover",
    "cache_warmup": "tierwatch.recovery.actions.cache_warmup:CacheWarmup",
}


def load_action(name: str) -> Action:
    """A new instance of the named action."""
    module_name, _, class_name = ACTION_CLASSES[name].partition(":")
    cls: type[Action] = getattr(importlib.import_module(module_name), class_name)
    return cls()


__all__ = ["ACTION_CLASSES", "Action", "ActionContext", "AlertRef", "Outcome", "load_action"]
