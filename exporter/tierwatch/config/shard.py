"""``tierwatch serve --shard I/N``: this exporter probes only the clusters whose stable hash falls in
shard I of N, so N exporters (a StatefulSet's replicas, ordinal I) split the config's clusters between
them without a coordinator. The hash is SHA-256 of the cluster name: the same on every host, every
Python and every restart; adding a cluster moves no other cluster, changing N moves about 1/N of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass

from .exporter import LoadedConfig

_SHARD = re.compile(r"(\d+)/(\d+)")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``total``."""

    index: int
    total: int

    def owns(self, cluster: str) -> bool:
        """Whether this shard probes ``cluster``."""
        return shard_of(cluster, self.total) == self.index

    def apply(self, loaded: LoadedConfig) -> LoadedConfig:
        """The loaded config with only this shard's clusters (secrets kept as loaded)."""
        clusters = [c for c in loaded.config.clusters if self.owns(c.name)]
        return dataclasses.replace(loaded, config=loaded.config.model_copy(update={"clusters": clusters}))

    def __str__(self) -> str:
        return f"{self.index}/{self.total}"


def shard_of(cluster: str, total: int) -> int:
    """The shard (0..total-1) that owns ``cluster``."""
    digest = hashlib.sha256(cluster.encode()).digest()
    return int.from_bytes(digest[:8], "big") % total


def parse_shard(text: str) -> Shard:
    """``I/N`` with 0 <= I < N <= 1024; ValueError says what is expected."""
    match = _SHARD.fullmatch(text.strip())
    if not match:
        raise ValueError(f"--shard {text!r}: expected I/N, e.g. 0/3 (this exporter's index, then the count)")
    index, total = int(match.group(1)), int(match.group(2))
    if not 1 <= total <= 1024 or index >= total:
        raise ValueError(f"--shard {text!r}: expected 0 <= I < N <= 1024")
    return Shard(index, total)
