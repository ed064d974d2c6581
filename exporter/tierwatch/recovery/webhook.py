"""Alertmanager webhook payloads (version 4), validated strictly enough to act on safely."""

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
        return WebhookPayload.model_validate(data)
    except ValidationError as exc:
        fields = sorted({_location(err["loc"]) for err in exc.errors(include_input=False)})
        raise PayloadError(
            422, "not an Alertmanager version 4 notification; invalid: " + ", ".join(fields[:10])
        ) from None
