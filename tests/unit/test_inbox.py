"""The durable inbox on its own: exactly-once recording, resolution, crash recovery, supersession."""

from __future__ import annotations

from pathlib import Path

from tierwatch.recovery.inbox import Inbox
from tierwatch.recovery.webhook import parse_payload

from recovery_fixtures import alert, payload


def record(inbox: Inbox, *alerts: dict[str, object]) -> list[str]:
    import json

    return [d.result for d in inbox.record(parse_payload(json.dumps(payload(*alerts)).encode()))]


def test_exactly_once_and_resolution(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path / "inbox.sqlite3")
    firing = alert("AppInstanceDown", {"cluster": "web", "target": "es-1", "action": "restart_instance"})
    assert record(inbox, firing) == ["accepted"]
    assert record(inbox, firing, firing) == ["duplicate", "duplicate"]
    claimed = inbox.claim_next()
    assert claimed is not None and claimed.alertname == "AppInstanceDown" and inbox.claim_next() is None
    assert record(inbox, dict(firing, status="resolved")) == ["resolved"]
    inbox.close()


def test_crash_recovery_rules(tmp_path: Path) -> None:
    path = tmp_path / "inbox.sqlite3"
    inbox = Inbox(path)
    before = alert("A", {"cluster": "c"})
    past = alert("B", {"cluster": "c"})
    record(inbox, before, past)
    first, second = inbox.claim_next(), inbox.claim_next()
    assert first is not None and second is not None
    inbox.mark_point_of_no_return(second.key)
    inbox.close()
    reopened = Inbox(path)  # as after a crash: both were left running
    resumed = reopened.interrupted()
    assert [a.key for a in resumed] == [second.key]  # past its point of no return: verify, not redo
    again = reopened.claim_next()
    assert again is not None and again.key == first.key  # before it: runs again from the start
    reopened.close()


def test_regional_failover_supersedes_instance_actions(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path / "inbox.sqlite3")
    since = 60.0  # received within the last minute
    region_down = alert(
        "AppRegionDown",
        {"cluster": "web", "region": "primary", "action": "regional_failover"},
    )
    assert not inbox.active_with("web", "regional_failover", "primary", since)
    record(inbox, region_down)
    assert inbox.active_with("web", "regional_failover", "primary", since)
    assert not inbox.active_with("web", "regional_failover", "failover", since)
    assert not inbox.active_with("other", "regional_failover", "primary", since)
    claimed = inbox.claim_next()
    assert claimed is not None
    inbox.finish(claimed.key, "refused", "every server answers")
    assert not inbox.active_with("web", "regional_failover", "primary", since)
    inbox.close()


def test_the_decision_at_the_point_of_no_return_survives_a_crash_and_a_takeover(tmp_path: Path) -> None:
    """A failover records which server it promotes at its point of no return: the run resumed after
    a crash (this inbox) or by a new leader (another replica's inbox, from the etcd ledger record)
    finishes that promotion instead of choosing again."""
    path = tmp_path / "inbox.sqlite3"
    inbox = Inbox(path)
    down = alert("RedisMasterDown", {"cluster": "cache", "target": "redis-a"})
    record(inbox, down)
    claimed = inbox.claim_next()
    assert claimed is not None and claimed.decision is None
    inbox.mark_point_of_no_return(claimed.key, {"promote": "redis-c"})
    inbox.close()
    reopened = Inbox(path)
    [resumed] = reopened.interrupted()
    assert resumed.decision == {"promote": "redis-c"}
    reopened.close()

    other = Inbox(tmp_path / "replica-2.sqlite3")  # never saw the alert: adopts the ledger record
    ledger = {"key": claimed.key, "alertname": "RedisMasterDown", "labels": claimed.labels,
              "decision": {"promote": "redis-c"}}  # fmt: skip
    [adopted] = other.reconcile({}, [ledger], set())
    assert adopted.key == claimed.key and adopted.decision == {"promote": "redis-c"}
    other.close()


def test_a_takeover_resumes_a_ledger_run_even_if_its_alert_resolved_here_meanwhile(tmp_path: Path) -> None:
    """The leader promoted and died before moving the write backend; the new primary made the alert
    resolve, and the follower saw that before it took the lease. A run past its point of no return
    with no done record is the new leader's to finish (verify-only), resolved or not: found by the
    kill-recovery-leader-pg drill, where writes never came back."""
    inbox = Inbox(tmp_path / "follower.sqlite3")
    down = alert("PostgresPrimaryDown", {"cluster": "main-db", "target": "pg-1"})
    record(inbox, down)
    record(inbox, {**down, "status": "resolved"})
    assert inbox.claim_next() is None  # resolved while pending: nothing to run on its own
    key = f"00000000000000d4@{down['startsAt']}"
    ledger = {"key": key, "alertname": "PostgresPrimaryDown", "labels": down["labels"],
              "decision": {"promote": "pg-2"}}  # fmt: skip
    [adopted] = inbox.reconcile({}, [ledger], set())
    assert adopted.key == key and adopted.decision == {"promote": "pg-2"}
    inbox.close()
