"""One target's keys (``targets[]``, a Sentinel's ``targets[]``, a discovery entry's ``options``).

Its own module so that both the cluster model (``exporter``) and the discovery checks (``discovery``)
use it without importing each other.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TargetConfig(_Strict):
    name: Name
    region: Name
    url: str
    stats_socket: str | None = None
    stats_url: str | None = None
    expect_status: list[Annotated[int, Field(ge=100, le=599)]] | None = None
    expect_body: str | None = None
    tls_skip_verify: bool = False
    tls_ca_file: str | None = None
    # HTTP reads are bounded (see clients/http.py): body bytes read from the health URL, and from
    # the stats page or runtime API (a CSV of every proxy and server, so a larger default)
    max_body_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 64 * 1024
    max_stats_bytes: Annotated[int, Field(ge=64 * 1024, le=256 * 1024 * 1024)] = 4 * 1024 * 1024
    # follow up to 10 redirects (a loop or more is a failure); false: a 3xx fails unless expect_status
    follow_redirects: bool = True

    @field_validator("expect_body")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"expected a valid regular expression ({exc.msg})") from None
        return value
