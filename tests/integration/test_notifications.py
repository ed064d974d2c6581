"""Notifications for real: a real Alertmanager with alertmanager/alertmanager.yml's routes delivers to a
real SMTP server (aiosmtpd) and to a local webhook sink, first with the shipped receivers, then with the
drop-in receivers of alertmanager/receivers/ (e-mail, Slack-compatible chat, paging webhook). Each message
is checked for the summary, the runbook link, the severity, and one message per group (alertname +
cluster). Only the group_wait of the routes is shortened (to 1s) so that the test does not wait 30s."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiosmtpd.controller import Controller

from tierwatch_lab.stack import Stack, free_port, wait_for
from tierwatch_lab.stack.alertmanager import Alertmanager, rewrite_for_test, start_alertmanager

from webhook_sink import Sink, webhook_sink

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "alertmanager" / "alertmanager.yml"
EXAMPLES = ROOT / "alertmanager" / "receivers"
MAX_BODY = 1 << 20
PAGER_TOKEN = "pager-test-token"


def rules() -> dict[str, dict[str, Any]]:
    return {
        rule["alert"]: rule
        for path in sorted((ROOT / "rules").glob("*.rules.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


RULES = rules()


# ---- the receiving ends ----


@pytest.fixture
def sink() -> Iterator[Sink]:
    with webhook_sink() as box:
        yield box


class _Mailbox:
    """aiosmtpd handler keeping every message it is handed."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.recipients: list[list[str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp() -> Iterator[tuple[int, _Mailbox]]:
    mailbox = _Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, data_size_limit=MAX_BODY)
    controller.start()
    yield port, mailbox
    controller.stop()


# ---- the Alertmanager under test ----


def fast_routes(route: dict[str, Any]) -> None:
    """group_wait 1s on every route (the only change to the shipped routes)."""
    route["group_wait"] = "1s"
    for child in route.get("routes", []):
        fast_routes(child)


def config_text(sink: Sink, secrets: Path, *, smtp_port: int = 0, examples: tuple[str, ...] = ()) -> str:
    """alertmanager.yml with its receivers pointed at the sink (and the SMTP server), and the named
    receiver examples in place of the shipped receivers of the same name."""
    config = yaml.safe_load(CONFIG.read_text())
    fast_routes(config["route"])
    replacements = {r["name"]: r for r in (yaml.safe_load((EXAMPLES / f).read_text()) for f in examples)}
    assert set(replacements) <= {r["name"] for r in config["receivers"]}, "an example replaces no receiver"
    config["receivers"] = [replacements.get(r["name"], r) for r in config["receivers"]]
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = {
                "recovery": "http://127.0.0.1:9490/webhook",  # rewrite_for_test points it at the sink
                "pager": f"{sink.url}/page",
                "deadmans-switch": f"{sink.url}/heartbeat",
            }[receiver["name"]]
        for mail in receiver.get("email_configs", []):
            # the relay of the example wants STARTTLS and a login; the local server speaks plain SMTP
            mail.update(smarthost=f"127.0.0.1:{smtp_port}", require_tls=False)
            mail.pop("auth_username")
            mail.pop("auth_password_file")
    secrets.mkdir(parents=True, exist_ok=True)
    (secrets / "slack-webhook-url").write_text(f"{sink.url}/slack\n")
    (secrets / "pager-token").write_text(PAGER_TOKEN + "\n")
    (secrets / "recovery-token").write_text("recovery-test-token\n")
    return rewrite_for_test(yaml.safe_dump(config, sort_keys=False), secrets, f"{sink.url}/recovery")


def alert(name: str, description: str, **labels: str) -> dict[str, Any]:
    """An alert as Prometheus sends it: the rule's labels and static annotations, expanded description."""
    rule = RULES[name]
    starts = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=3)).isoformat()
    return {
        "labels": {"alertname": name, **rule["labels"], **labels},
        "annotations": {**rule["annotations"], "description": description},
        "startsAt": starts,
    }


# Two warning groups (QueueBacklogHigh on two clusters, one of them with two queues), one critical alert
# with a recovery action, one critical without, one info alert.
ALERTS = [
    alert("QueueBacklogHigh", "Queue emails on cache-main has had 2.5k jobs waiting.",
          tier="redis", cluster="cache-main", queue="emails"),
    alert("QueueBacklogHigh", "Queue jobs on cache-main has had 1.2k jobs waiting.",
          tier="redis", cluster="cache-main", queue="jobs"),
    alert("QueueBacklogHigh", "Queue emails on cache-b has had 4k jobs waiting.",
          tier="redis", cluster="cache-b", queue="emails"),
    alert("RedisMasterDown", "Redis redis-a (primary), master of cluster cache-main, has not answered.",
          tier="redis", cluster="cache-main", target="redis-a", region="primary"),
    alert("PostgresSplitBrain", "PostgreSQL cluster main-db has had 2 live primaries.",
          tier="postgres", cluster="main-db"),
    alert("RecoveryFailoverHappened", "The recovery service completed 1 failover(s) of cache-main.",
          tier="redis", cluster="cache-main", recovery_action="redis_failover"),
]  # fmt: skip


def deliver(stack: Stack, text: str) -> Alertmanager:
    manager = start_alertmanager(stack, text)
    # startsAt now: Alertmanager flushes a new group at once when an alert's startsAt + group_wait is
    # already past, which raced the insertion of the group's second alert (one CI run e-mailed
    # [FIRING:1] for cache-main); from now, the group waits its group_wait with all of the batch in it
    now = dt.datetime.now(dt.UTC).isoformat()
    manager.post_alerts([{**a, "startsAt": now} for a in ALERTS])
    return manager


def runbook(name: str) -> str:
    url = RULES[name]["annotations"]["runbook_url"]
    assert url.startswith("https://") and url.endswith(f"/docs/runbooks/{name}.md")
    return url


def by_cluster(groups: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {group[key]: group for group in groups}


def check_pager_payloads(sink: Sink) -> None:
    pages = {
        (p["body"]["groupLabels"]["alertname"], p["body"]["groupLabels"]["cluster"]): p
        for p in sink.posts("/page")
    }
    assert set(pages) == {("RedisMasterDown", "cache-main"), ("PostgresSplitBrain", "main-db")}
    for (name, cluster), page in pages.items():
        body = page["body"]
        assert body["version"] == "4" and body["status"] == "firing" and body["receiver"] == "pager"
        assert body["commonLabels"]["severity"] == "critical"
        [sent] = body["alerts"]
        assert sent["labels"]["alertname"] == name and sent["labels"]["cluster"] == cluster
        assert sent["annotations"]["summary"] == RULES[name]["annotations"]["summary"]
        assert sent["annotations"]["runbook_url"] == runbook(name)
    # both have an action (redis_failover, pg_rejoin): each goes to the recovery service in its own group
    recoveries = sink.posts("/recovery")
    assert all(r["headers"]["Authorization"] == "Bearer recovery-test-token" for r in recoveries)
    sent = sorted(a["labels"]["alertname"] for r in recoveries for a in r["body"]["alerts"])
    assert sent == ["PostgresSplitBrain", "RedisMasterDown"]


# ---- the tests ----


def test_shipped_receivers_deliver_summary_runbook_severity_per_group(
    stack: Stack, sink: Sink, tmp_path: Path
) -> None:
    deliver(stack, config_text(sink, tmp_path / "secrets"))
    wait_for(lambda: len(sink.posts("/slack")) >= 3 and len(sink.posts("/page")) >= 2, 30, "notifications")
    wait_for(lambda: len(sink.posts("/recovery")) >= 2, 30, "the recovery webhooks")
    slack = [p["body"] for p in sink.posts("/slack")]
    assert len(slack) == 3, [m.get("attachments") for m in slack]
    tickets = [m for m in slack if m["channel"] == "#ops-tickets"]
    chat = [m for m in slack if m["channel"] == "#ops"]
    assert len(tickets) == 2 and len(chat) == 1
    titles = {m["attachments"][0]["title"]: m["attachments"][0]["text"] for m in tickets}
    main = titles.pop("[FIRING] warning: QueueBacklogHigh in cluster cache-main")
    other = titles.pop("[FIRING] warning: QueueBacklogHigh in cluster cache-b")
    summary = RULES["QueueBacklogHigh"]["annotations"]["summary"]
    assert main.count(f"*{summary}*") == 2 and other.count(f"*{summary}*") == 1
    assert "Queue emails on cache-main" in main and "Queue jobs on cache-main" in main
    assert "cache-main" not in other and "Queue emails on cache-b" in other
    assert main.count(f"<{runbook('QueueBacklogHigh')}|Runbook>") == 2
    [info] = chat
    assert info["attachments"][0]["title"] == "[FIRING] info: RecoveryFailoverHappened in cluster cache-main"
    assert f"<{runbook('RecoveryFailoverHappened')}|Runbook>" in info["attachments"][0]["text"]
    check_pager_payloads(sink)


def test_receiver_examples_deliver_email_chat_and_pages(
    stack: Stack, sink: Sink, smtp: tuple[int, _Mailbox], tmp_path: Path
) -> None:
    smtp_port, mailbox = smtp
    text = config_text(
        sink,
        tmp_path / "secrets",
        smtp_port=smtp_port,
        examples=("email.yml", "slack.yml", "pager-webhook.yml"),
    )
    deliver(stack, text)
    wait_for(lambda: len(mailbox.messages) >= 2, 30, "two e-mails")
    wait_for(lambda: len(sink.posts("/slack")) >= 1 and len(sink.posts("/page")) >= 2, 30, "chat and pages")

    # e-mail: one per group, subject naming severity, alert and cluster; every alert in the body
    assert len(mailbox.messages) == 2
    mails = {m["Subject"]: m for m in mailbox.messages}
    assert set(mails) == {
        "[FIRING:2] warning: QueueBacklogHigh in cluster cache-main",
        "[FIRING:1] warning: QueueBacklogHigh in cluster cache-b",
    }
    assert mailbox.recipients == [["ops-tickets@example.com"]] * 2
    main = mails["[FIRING:2] warning: QueueBacklogHigh in cluster cache-main"]
    assert main["To"] == "ops-tickets@example.com" and main["From"] == "alertmanager@example.com"
    plain = main.get_body(("plain",))
    html = main.get_body(("html",))
    assert plain is not None and html is not None
    body, markup = plain.get_content(), html.get_content()
    summary = RULES["QueueBacklogHigh"]["annotations"]["summary"]
    assert body.startswith("2 firing, 0 resolved: QueueBacklogHigh in cluster cache-main")
    assert body.count(f"FIRING [warning] {summary}") == 2
    assert "Queue emails on cache-main" in body and "Queue jobs on cache-main" in body
    assert "cache-b" not in body
    assert body.count(f"runbook: {runbook('QueueBacklogHigh')}") == 2
    assert markup.count(f'<a href="{runbook("QueueBacklogHigh")}">runbook</a>') == 2
    assert (
        "Queue emails on cache-b"
        in mails["[FIRING:1] warning: QueueBacklogHigh in cluster cache-b"].as_string()
    )

    # chat: the info alert, coloured, its title linking to the runbook
    [chat] = [p["body"] for p in sink.posts("/slack")]
    [attachment] = chat["attachments"]
    assert chat["channel"] == "#ops"
    assert attachment["title"] == "[FIRING] info: RecoveryFailoverHappened in cluster cache-main"
    assert attachment["title_link"] == runbook("RecoveryFailoverHappened")
    assert attachment["color"] == "warning"
    summary = RULES["RecoveryFailoverHappened"]["annotations"]["summary"]
    assert attachment["text"].startswith(f"*{summary}* (info)")
    assert attachment["fallback"] == f"[FIRING] RecoveryFailoverHappened in cluster cache-main: {summary}"

    # pages: authenticated, one per group, with severity, summary and runbook of every alert
    for page in sink.posts("/page"):
        assert page["headers"]["Authorization"] == f"Bearer {PAGER_TOKEN}"
        assert page["body"]["truncatedAlerts"] == 0
    check_pager_payloads(sink)
