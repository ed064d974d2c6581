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
    alerts: Annotated[list[WebhookAlert], Field(min_length=1, max_length=1000)]


class PayloadError(ValueError):
    """The body is not a valid version 4 notification; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_payload(body: bytes) -> WebhookPayload:
    """Parse and validate a notification body; raises PayloadError (400 for bad JSON, 422 for a
    payload that is JSON but not a version 4 notification). Messages name fields, never values."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PayloadError(400, "body is not valid JSON") from None
    try:
        return WebhookPayload.model_validate(data)
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in err["loc"]) or "(body)" for err in exc.errors()})
        raise PayloadError(
            422, "not an Alertmanager version 4 notification; invalid: " + ", ".join(fields[:10])
        ) from None
