"""The tierwatch config: one YAML file, validated into typed settings.

- ``exporter``: the monitor, the clusters and their targets, loading and error reporting;
- ``discovery``: a cluster's ``discovery:`` list (file_sd, dns_sd) and its load-time checks;
- ``recovery``: the ``recovery:`` section of ``tierwatch recover``;
- ``yaml_file``: reading the file within limits (1 MiB, UTF-8, 32 levels, no duplicate keys);
- ``secrets``: the one reader of password and token files, used at load time.

Config imports nothing from the rest of the package except ``durations``, ``dns_text`` and the action
and tier catalogues. ``target`` holds the one target model both ``exporter`` and ``discovery`` use (neither
imports the other's module at run time: ``discovery`` does not import ``exporter`` at all).
"""

from .discovery import DiscoveryConfig, DnsSDConfig, FileSDConfig
from .exporter import (
    BreakerSettings,
    ClusterConfig,
    ConfigError,
    LoadedConfig,
    LogSettings,
    MonitorSettings,
    PatroniConfig,
    PatroniMember,
    QueueConfig,
    Secret,
    SentinelConfig,
    TargetConfig,
    TierwatchConfig,
    load_config,
    target_url_problem,
)
from .recovery import ClusterRecovery, RecoverySettings

__all__ = [
    "BreakerSettings",
    "ClusterConfig",
    "ClusterRecovery",
    "ConfigError",
    "DiscoveryConfig",
    "DnsSDConfig",
    "FileSDConfig",
    "LoadedConfig",
    "LogSettings",
    "MonitorSettings",
    "PatroniConfig",
    "PatroniMember",
    "QueueConfig",
    "RecoverySettings",
    "Secret",
    "SentinelConfig",
    "TargetConfig",
    "TierwatchConfig",
    "load_config",
    "target_url_problem",
]
