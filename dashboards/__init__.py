"""Grafana dashboards for tierwatch, generated from code (see generate.py and docs/dashboards.md)."""
