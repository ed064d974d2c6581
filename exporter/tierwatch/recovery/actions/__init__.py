"""Recovery actions, one module each, looked up by name in the action catalogue
(tierwatch.action_catalog). A module is imported only for an action the allow-list names (a config
without Redis or PostgreSQL loads neither client), when the service starts (``preload``): importing
one took 0.2-0.3 s of the first failover of every service process. One small function per action:
plain imports, so the layout test (tests/unit/test_layout.py) sees every dependency."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .base import Action, ActionContext, AlertRef, Outcome


def _redis_failover() -> type[Action]:
    from .redis_failover import RedisFailover

    return RedisFailover


def _pg_promote() -> type[Action]:
    from .pg_promote import PgPromote

    return PgPromote


def _restart_instance() -> type[Action]:
    from .restart import RestartInstance

    return RestartInstance


def _shift_traffic() -> type[Action]:
    from .traffic import ShiftTraffic

    return ShiftTraffic


def _regional_failover() -> type[Action]:
    from .traffic import RegionalFailover

    return RegionalFailover


def _cache_warmup() -> type[Action]:
    from .cache_warmup import CacheWarmup

    return CacheWarmup


def _redis_rejoin() -> type[Action]:
    from .redis_rejoin import RedisRejoin

    return RedisRejoin


def _pg_rejoin() -> type[Action]:
    from .pg_rejoin import PgRejoin

    return PgRejoin


# every action of the catalogue (tests/unit/test_action_catalog.py keeps the two in step)
ACTION_CLASSES: dict[str, Callable[[], type[Action]]] = {
    "redis_failover": _redis_failover,
    "pg_promote": _pg_promote,
    "restart_instance": _restart_instance,
    "shift_traffic": _shift_traffic,
    "regional_failover": _regional_failover,
    "cache_warmup": _cache_warmup,
    "redis_rejoin": _redis_rejoin,
    "pg_rejoin": _pg_rejoin,
}


def preload(names: Iterable[str]) -> None:
    """Import the modules of the named actions now, so that their first run does not pay for it."""
    for name in sorted(names):
        ACTION_CLASSES[name]()


def load_action(name: str) -> Action:
    """A new instance of the named action (one per run: an action may keep state while it runs)."""
    return ACTION_CLASSES[name]()()


__all__ = ["ACTION_CLASSES", "Action", "ActionContext", "AlertRef", "Outcome", "load_action", "preload"]
