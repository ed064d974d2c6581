"""The one action registry: the config's ActionName, the recovery metrics' tier map, the instance and
failover sets and the classes all come from tierwatch.action_catalog."""

from __future__ import annotations

import typing

import pydantic
import pytest

from tierwatch import action_catalog as catalog
from tierwatch.config.recovery import ActionName, RecoverySettings
from tierwatch.metric_catalog import FAILURE_REASONS
from tierwatch.probes import base as probe_base
from tierwatch.recovery import metrics
from tierwatch.recovery.actions import ACTION_CLASSES, load_action


def test_action_name_accepts_exactly_the_catalogued_actions() -> None:
    assert typing.get_args(ActionName) == catalog.action_names()
    for name in catalog.action_names():
        assert RecoverySettings(allow={"SomeAlert": name}).allowed_actions() == {name}
    with pytest.raises(pydantic.ValidationError, match="redis_failover"):
        RecoverySettings(allow={"SomeAlert": "drop_database"})


def test_every_catalogued_action_loads_as_its_own_class_one_instance_per_run() -> None:
    assert set(ACTION_CLASSES) == set(catalog.action_names())
    for spec in catalog.CATALOG:
        first, second = load_action(spec.name), load_action(spec.name)
        assert first.name == spec.name
        assert first is not second  # an action may keep state during its run


def test_tiers_instance_and_failover_sets_are_derived_from_the_catalogue() -> None:
    assert {spec.name: spec.tiers for spec in catalog.CATALOG} == metrics.ACTION_TIERS
    assert metrics.ACTION_TIERS["pg_promote"] == ("postgres",)
    assert {"restart_instance", "shift_traffic"} == catalog.INSTANCE_ACTIONS
    assert {"redis_failover", "pg_promote", "regional_failover"} == catalog.FAILOVER_ACTIONS
    assert not hasattr(metrics, "ACTIONS")


def test_one_list_of_probe_failure_reasons() -> None:
    assert not hasattr(probe_base, "REASONS")
    for reason in FAILURE_REASONS:
        assert probe_base.ProbeFailure(reason).reason == reason
    with pytest.raises(ValueError, match="unknown failure reason"):
        probe_base.ProbeFailure("exploded")
