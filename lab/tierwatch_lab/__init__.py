"""The lab wing: starts real servers (Redis, PostgreSQL, HAProxy, Prometheus, Alertmanager, the Express
demo app, the kit itself) for the tests, ``tierwatch demo``, the drills and the benches.

Never imported by the product (``serve``, ``recover``, ``check-config``):
tests/unit/test_imports.py checks it.
"""
