"""Alertmanager webhook payloads (version 4), validated strictly enough to act on safely.

An alert's fingerprint is Alertmanager's hash of its labels (prometheus/common's
``LabelSet.Fingerprint``: 64-bit FNV-1a over the sorted names and values, each followed by the byte
0xff). The inbox keys alerts by it, so it is recomputed here: a notification whose fingerprint does not
match its labels (a forged or corrupted one) could otherwise make one alert pass for another.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

LabelValue = Annotated[str, Field(max_length=1024)]


class WebhookAlert(BaseModel):
    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: dict[Annotated[str, Field(max_length=256)], LabelValue]
    annotations: dict[str, str] = {}
    startsAt: Annotated[str, Field(min_length=1, max_length=64)]
    endsAt: str = ""
    generatorURL: str = ""
    fingerprint: Annotated[str, Field(pattern=r"^[0-9a-f]{1,64}$")]


class WebhookPayload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    version: Literal["4"]
    groupKey: str = ""
    status: Literal["firing", "resolved"]
    receiver: str = ""
    truncatedAlerts: Annotated[int, Field(ge=0)] = 0
    # a whole group: bounded by the body size limit, not by a count (a count limit would reject the
    # group, the alert that matters with it)
    alerts: Annotated[list[WebhookAlert], Field(min_length=1)]


# the names a validation error may show; anything else in an error location (a label name, a key
# the sender chose) is input and is never echoed
_FIELD_NAMES = frozenset(WebhookPayload.model_fields) | frozenset(WebhookAlert.model_fields)


def _location(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) if isinstance(p, int) or p in _FIELD_NAMES else "*" for p in loc]
    return ".".join(parts) or "(body)"


FNV64_OFFSET, FNV64_PRIME, SEPARATOR = 14695981039346656037, 1099511628211, 0xFF
MASK64 = (1 << 64) - 1


def fingerprint_of(labels: dict[str, str]) -> str:
    """Alertmanager's fingerprint of a label set, as the 16 hex digits it sends."""
    value = FNV64_OFFSET
    for name in sorted(labels):  # code point order is UTF-8 byte order, as Go sorts
        for part in (name, labels[name]):
            for byte in part.encode():
                value = ((value ^ byte) * FNV64_PRIME) & MASK64
            value = ((value ^ SEPARATOR) * FNV64_PRIME) & MASK64
    return f"{value:016x}"


class PayloadError(ValueError):
    """The body is not a valid version 4 notification; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_payload(body: bytes) -> WebhookPayload:
    """Parse and validate a notification body; raises PayloadError (400 for bad JSON, 422 for a
    payload that is JSON but not a version 4 notification). Messages name fields, never values or
    keys the sender chose."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PayloadError(400, "body is not valid JSON") from None
    except RecursionError:
        raise PayloadError(400, "body is nested too deeply") from None
    try:
        payload = WebhookPayload.model_validate(data)
    except ValidationError as exc:
        fields = sorted({_location(err["loc"]) for err in exc.errors(include_input=False)})
        raise PayloadError(
            422, "not an Alertmanager version 4 notification; invalid: " + ", ".join(fields[:10])
        ) from None
    wrong = [str(i) for i, a in enumerate(payload.alerts) if a.fingerprint != fingerprint_of(a.labels)]
    if wrong:
        shown = ", ".join(f"alerts.{i}.fingerprint" for i in wrong[:10])
        raise PayloadError(422, f"fingerprint does not match the alert's labels: {shown}")
    return payload
