"""The ``metrics:`` settings turn opt-in series on (per-target latency histograms, HTTP response size);
a bad value or unknown key is a clear error naming the file, line and key path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tierwatch.config import ConfigError, load_config

WEB = [
    {"name": "web", "tier": "app", "targets": [{"name": "w", "region": "p", "url": "http://127.0.0.1:9/"}]}
]


def test_opt_in_series_are_off_by_default_and_can_be_turned_on(
    write_config: Callable[[dict[str, Any]], Path],
) -> None:
    default = load_config(write_config({"clusters": WEB})).config.metrics
    assert (default.probe_duration_histogram, default.http_response_size) == (False, False)
    on = {"probe_duration_histogram": True, "http_response_size": True}
    loaded = load_config(write_config({"metrics": on, "clusters": WEB})).config.metrics
    assert (loaded.probe_duration_histogram, loaded.http_response_size) == (True, True)


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        (
            {"probe_duration_histogram": "maybe"},
            "metrics.probe_duration_histogram: input should be a valid boolean",
        ),
        ({"histograms": True}, "metrics.histograms: unknown key; expected one of: http_response_size, "),
    ],
)
def test_a_bad_metrics_setting_names_the_file_and_key(
    write_config: Callable[[dict[str, Any]], Path], metrics: dict[str, Any], expected: str
) -> None:
    path = write_config({"metrics": metrics, "clusters": WEB})
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert f"{path}:" in str(caught.value)
    assert expected in str(caught.value)
