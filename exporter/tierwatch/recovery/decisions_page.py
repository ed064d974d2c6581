"""``GET /decisions``: the recovery service's recent decisions as an HTML page, read from the tail of
its audit trail.

Bounded however large the trail grows: at most ``TAIL_BYTES`` are read, from the end of the file
(``audit.read_tail``; a torn last line is ignored), and the last ``SHOWN`` decisions among them are
shown, newest first, each value cut to ``VALUE_CHARS`` and escaped. The audit holds names, states
and reasons only, never a secret (``AuditTrail.record``); the page shows a few of its fields.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .audit import read_tail

TAIL_BYTES = 256 * 1024
SHOWN = 100
VALUE_CHARS = 300

# audit events that decide what happens to an alert, and the outcome each stands for (None: the
# record's own ``outcome``)
DECISION_EVENTS: dict[str, str | None] = {
    "action_started": "started",
    "outcome": None,
    "blocked": "blocked",
    "handled_by_peer": "handled_by_peer",
    "action_deferred": "deferred",
    "action_stopped": "stopped",
    "action_interrupted": "interrupted",
    "outcome_not_recorded": "not_recorded",
}
# the colour of an outcome (a class from this fixed set, never a value from the file)
_TONE = {
    "succeeded": "good",
    "dry_run": "dry",
    "failed": "bad",
    "timed_out": "bad",
    "not_recorded": "bad",
    "refused": "held",
    "blocked": "held",
    "deferred": "held",
    "stopped": "held",
    "interrupted": "held",
}

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1d1d1f;background:#fafafa}
h1{font-size:1.3rem;margin:0 0 .3rem} .meta{color:#666;font-size:.85rem;margin-bottom:1rem}
table{border-collapse:collapse;width:100%;font-size:.9rem;background:#fff}
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #eee;vertical-align:top}
th{color:#555;font-weight:600} .when{color:#777;white-space:nowrap}
.outcome{font-weight:700;padding:.1rem .45rem;border-radius:4px;color:#fff;background:#777}
.good{background:#2e7d32}.bad{background:#c62828}.held{background:#ef6c00}.dry{background:#1565c0}
"""


@dataclass(frozen=True)
class Decision:
    """One decision about an alert, as the page shows it."""

    when: float | None
    alert: str
    action: str
    cluster: str
    target: str
    outcome: str
    detail: str


def _text(value: Any) -> str:
    return "" if value is None else str(value)[:VALUE_CHARS]


def _detail(event: str, entry: Mapping[str, Any]) -> str:
    if event == "blocked":
        return f"limit: {_text(entry.get('limit'))}"
    if event == "action_started":
        notes = [w for w, on in (("dry run", entry.get("dry_run")), ("resumed", entry.get("resumed"))) if on]
        return ", ".join(notes)
    if event == "action_interrupted":
        return f"{_text(entry.get('reason'))}, then {_text(entry.get('then'))}"
    parts = [_text(entry.get(key)) for key in ("reason", "detail") if entry.get(key) is not None]
    return "; ".join(parts)[:VALUE_CHARS]


def decision_of(entry: Mapping[str, Any]) -> Decision | None:
    """The decision an audit record states, or None for the other records."""
    event = entry.get("event")
    if not isinstance(event, str) or event not in DECISION_EVENTS:
        return None
    ts = entry.get("ts")
    when = float(ts) if isinstance(ts, (int, float)) and math.isfinite(ts) else None
    outcome = DECISION_EVENTS[event] or _text(entry.get("outcome")) or "unknown"
    return Decision(
        when,
        _text(entry.get("alert")),
        _text(entry.get("action")),
        _text(entry.get("cluster")),
        _text(entry.get("target")),
        outcome,
        _detail(event, entry),
    )


def recent_decisions(entries: Iterable[Mapping[str, Any]], count: int = SHOWN) -> list[Decision]:
    """The last ``count`` decisions among ``entries`` (oldest first), newest first."""
    found = [d for d in map(decision_of, entries) if d is not None]
    return found[::-1][:count]


def read_decisions(path: Path, count: int = SHOWN, max_bytes: int = TAIL_BYTES) -> list[Decision]:
    """The last ``count`` decisions in the last ``max_bytes`` of the audit trail at ``path``, newest
    first (blocking: call it in a thread)."""
    return recent_decisions(read_tail(path, max_bytes), count)


def _age(now: float, then: float) -> str:
    seconds = max(0.0, now - then)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    return f"{seconds / 60:.0f}m ago" if seconds < 7200 else f"{seconds / 3600:.0f}h ago"


def render_decisions_page(decisions: list[Decision], now: float | None = None) -> str:
    """The page: one row per decision, newest first (auto-refreshes every 10 s)."""
    now = time.time() if now is None else now
    rows = []
    for d in decisions:
        when = (
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(d.when))} "
            f"<span class='when'>({_age(now, d.when)})</span>"
            if d.when is not None
            else "?"
        )
        where = html.escape(d.cluster) + (f" / {html.escape(d.target)}" if d.target else "")
        tone = _TONE.get(d.outcome, "")
        cells = [
            when,
            html.escape(d.alert),
            html.escape(d.action),
            where,
            f"<span class='outcome {tone}'>{html.escape(d.outcome)}</span>",
            html.escape(d.detail),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    body = (
        "<table><tr><th>when (UTC)</th><th>alert</th><th>action</th><th>cluster / target</th>"
        f"<th>outcome</th><th>detail</th></tr>{''.join(rows)}</table>"
        if rows
        else "<p>No decision in the audit trail's tail.</p>"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='refresh' content='10'>"
        f"<title>tierwatch recovery: decisions</title><style>{_STYLE}</style></head><body>"
        "<h1>tierwatch recovery: recent decisions</h1>"
        f"<div class='meta'>the last {len(decisions)} decisions (at most {SHOWN}) in the last "
        f"{TAIL_BYTES // 1024} KiB of the audit trail, newest first · "
        "<a href='/metrics'>/metrics</a> · <a href='/ready'>/ready</a></div>"
        f"{body}</body></html>"
    )
