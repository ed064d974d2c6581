"""The running configuration, as one value: a reload replaces it whole, and an action under way keeps
the one it started with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..config import ClusterConfig, LoadedConfig, RecoverySettings
from .auth import Authenticator


@dataclass(frozen=True)
class LiveConfig:
    """The loaded file, its recovery settings, its clusters by name and the webhook's authenticator."""

    loaded: LoadedConfig
    settings: RecoverySettings
    clusters: dict[str, ClusterConfig]
    auth: Authenticator

    @classmethod
    def of(cls, loaded: LoadedConfig, settings: RecoverySettings) -> LiveConfig:
        """Secrets (the webhook's token) are read at load time."""
        return cls(
            loaded,
            settings,
            {c.name: c for c in loaded.config.clusters},
            Authenticator.from_settings(settings.auth, loaded.auth_secret()),
        )


Current = Callable[[], LiveConfig]  # what the service runs with now
