"""tierwatch: a Prometheus exporter, alerting kit and recovery service for an HA web stack."""

__version__ = "0.1.0"
