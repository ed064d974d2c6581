"""Target discovery: clusters whose targets come from Prometheus file_sd files or DNS (SRV, A/AAAA)
besides their static ``targets:``.

- ``targets``: a discovered address and its labels -> a ``TargetConfig``, by the static targets' rules;
- ``file_sd``, ``dns_sd``: the two sources (dnspython is imported only when a config uses dns_sd);
- ``runner``: ``Discovery``, which refreshes every source and hands changed target lists to a callback;
- ``metrics``: its metrics and their collector.

The discovery room imports only foundation and config (tests/unit/test_layout.py).
"""

from .metrics import DiscoveryCollector
from .runner import Discovery, OnChange, SourceState

__all__ = ["Discovery", "DiscoveryCollector", "OnChange", "SourceState"]
