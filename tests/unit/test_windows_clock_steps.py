"""Cooldowns and rate limits when the wall clock steps (an NTP step, a resumed VM, a corrected date):
the inbox measures windows on the boot clock within one boot and on the wall clock only across
reboots, with the clock faked in-process. (libfaketime 0.9.10 from Debian makes CPython's time.sleep
fail with EINVAL once an offset is set, so the real process cannot run under it.)"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tierwatch.config.recovery import RecoverySettings
from tierwatch.recovery.inbox import Inbox
from tierwatch.recovery.webhook import parse_payload

from recovery_fixtures import alert, payload

HOUR = 3600.0
DEFAULTS = RecoverySettings()  # the shipped cooldown and rate limit
COOLDOWN, MAX_RUNS, PER = DEFAULTS.cooldown, DEFAULTS.rate_limit.max_actions, DEFAULTS.rate_limit.per


@dataclass
class FakeClock:
    """A wall clock that can step and a boot clock that only moves forward."""

    wall: float = 1_800_000_000.0
    since_boot: float = 5_000.0
    boot_id: str = "boot-1"

    def now(self) -> tuple[float, str, float]:
        return self.wall, self.boot_id, self.since_boot

    def wait(self, seconds: float) -> None:
        self.wall += seconds
        self.since_boot += seconds

    def reboot(self, up_for: float = 60.0) -> None:
        self.boot_id, self.since_boot = self.boot_id + "'", up_for


def reserve(inbox: Inbox, n: int, action: str = "restart_instance") -> str | None:
    return inbox.reserve(f"alert-{n}", "web", action, MAX_RUNS, PER, COOLDOWN)


def test_the_defaults_are_what_these_tests_assume() -> None:
    assert COOLDOWN < HOUR and MAX_RUNS >= 1 and PER == HOUR


def test_a_forward_step_inside_the_cooldown_does_not_let_the_action_run_twice(tmp_path: Path) -> None:
    clock = FakeClock()
    inbox = Inbox(tmp_path / "inbox.sqlite3", clock=clock)
    assert reserve(inbox, 1) is None
    clock.wait(30)
    clock.wall += 2 * HOUR  # the step
    assert reserve(inbox, 2) == "cooldown"
    clock.wait(COOLDOWN)  # really over now
    assert reserve(inbox, 3) is None


def test_a_forward_step_inside_the_rate_limit_window_does_not_reset_it(tmp_path: Path) -> None:
    clock = FakeClock()
    inbox = Inbox(tmp_path / "inbox.sqlite3", clock=clock)
    actions = [f"action-{n}" for n in range(MAX_RUNS + 1)]  # other actions: no cooldown between them
    for n, action in enumerate(actions[:-1]):
        assert reserve(inbox, n, action) is None
    clock.wait(60)
    clock.wall += 2 * HOUR
    assert reserve(inbox, 99, actions[-1]) == "rate_limit"


def test_a_backward_step_after_the_cooldown_ended_does_not_block_for_hours(tmp_path: Path) -> None:
    clock = FakeClock()
    inbox = Inbox(tmp_path / "inbox.sqlite3", clock=clock)
    assert reserve(inbox, 1) is None
    clock.wait(COOLDOWN + 1)
    clock.wall -= 2 * HOUR
    assert reserve(inbox, 2) is None


def test_the_boot_clock_survives_a_restart_of_the_service(tmp_path: Path) -> None:
    clock = FakeClock()
    inbox = Inbox(tmp_path / "inbox.sqlite3", clock=clock)
    assert reserve(inbox, 1) is None
    inbox.close()
    clock.wait(10)
    clock.wall += 2 * HOUR
    reopened = Inbox(tmp_path / "inbox.sqlite3", clock=clock)
    assert reserve(reopened, 2) == "cooldown"


def test_across_a_reboot_the_wall_clock_counts_and_a_future_record_counts_as_now(tmp_path: Path) -> None:
    clock = FakeClock()
    inbox = Inbox(tmp_path / "inbox.sqlite3", clock=clock)
    assert reserve(inbox, 1) is None
    clock.reboot()
    clock.wall += COOLDOWN + 1  # rebooted, and the cooldown has passed on the wall clock
    assert reserve(inbox, 2) is None
    clock.reboot()
    clock.wall -= 2 * HOUR  # rebooted with a clock two hours slow: the last run looks 2 h ahead
    assert reserve(inbox, 3) == "cooldown"  # treated as now: blocked for one cooldown, not 2 h more
    clock.wait(COOLDOWN + 1)  # the same boot from here: the boot clock ends it
    assert reserve(inbox, 4) is None


def test_another_replicas_runs_count_by_their_wall_time(tmp_path: Path) -> None:
    clock = FakeClock()
    inbox = Inbox(tmp_path / "inbox.sqlite3", clock=clock)
    inbox.import_runs([("peer-1", "web", "restart_instance", clock.wall - 10)])
    assert reserve(inbox, 1) == "cooldown"
    clock.wait(COOLDOWN)
    assert reserve(inbox, 2) is None


def test_a_regional_failover_still_supersedes_after_a_forward_step(tmp_path: Path) -> None:
    """The service asks whether a regional failover of the region came in within max(cooldown, 10 m):
    a +2 h step must not make one received 30 s ago look old (instance restarts would then run beside
    the regional failover)."""
    clock = FakeClock()
    inbox = Inbox(tmp_path / "inbox.sqlite3", clock=clock)
    labels = {"cluster": "web", "region": "primary", "action": "regional_failover"}
    inbox.record(parse_payload(json.dumps(payload(alert("AppRegionDown", labels))).encode()))
    clock.wait(30)
    clock.wall += 2 * HOUR
    assert inbox.active_with("web", "regional_failover", "primary", 600)
    clock.wait(600)
    assert not inbox.active_with("web", "regional_failover", "primary", 600)
