"""Generate tierwatch's Grafana dashboards (dashboards/*.json) from code with grafana-foundation-sdk.

Run from the repository root: ``python -m dashboards.generate`` writes the JSON files;
``python -m dashboards.generate --check`` exits 1 when a committed file differs from what this code
produces; ``--settings FILE --out DIR`` renders them with the ``runbook_url_base`` of a settings file
of ``rules/generate.py --settings``, so that panel links follow the alerts' runbook links. Every panel
says what it shows (title, description, unit), queries the templated ``datasource``, filters on the
``cluster``/``region``/``target`` variables (``tier`` too on the overview), uses ``$__rate_interval``
in rate queries and links to the runbooks of the alerts it is about. tests/unit/test_dashboards.py lints the
result; docs/dashboards.md describes it.

The building blocks are in dsl.py, each dashboard in its <name>_dashboard.py, the translation to
Grafana JSON in render.py; this module lists the dashboards and is the command line.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

if not __package__:  # python dashboards/generate.py: import the package from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dashboards.app_dashboard import APP
from dashboards.backups_dashboard import BACKUPS
from dashboards.dsl import Dashboard
from dashboards.exporter_dashboard import EXPORTER
from dashboards.hosts_dashboard import HOSTS
from dashboards.lb_dashboard import LB
from dashboards.logs_dashboard import LOGS
from dashboards.overview_dashboard import OVERVIEW
from dashboards.postgres_dashboard import POSTGRES
from dashboards.queues_dashboard import QUEUES
from dashboards.recovery_dashboard import RECOVERY
from dashboards.redis_dashboard import REDIS
from dashboards.render import GRAFANA_VERSION, RUNBOOK_BASE_URL, build_dashboard, render

__all__ = ["DASHBOARDS", "GRAFANA_VERSION", "RUNBOOK_BASE_URL", "build_dashboard", "main", "render"]

OUT_DIR = Path(__file__).resolve().parent
RULES_GENERATOR = OUT_DIR.parent / "rules" / "generate.py"
DASHBOARDS: tuple[Dashboard, ...] = (
    OVERVIEW, LB, APP, REDIS, POSTGRES, QUEUES, BACKUPS, RECOVERY, EXPORTER, HOSTS, LOGS,
)  # fmt: skip


def settings_runbook_base(path: Path) -> str:
    """``runbook_url_base`` of rules/src/settings.yml with the overrides in ``path`` (the file
    ``rules/generate.py --settings`` takes, loaded and checked by that generator), without its '/'.
    Raises ValueError naming the file and the problems."""
    rules_gen = sys.modules.get("tierwatch_rules_generate")
    if rules_gen is None:
        spec = importlib.util.spec_from_file_location("tierwatch_rules_generate", RULES_GENERATOR)
        assert spec is not None and spec.loader is not None
        rules_gen = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = rules_gen
        spec.loader.exec_module(rules_gen)
    try:
        settings = rules_gen.load_settings(path)
    except rules_gen.SettingsError as exc:
        raise ValueError(str(exc)) from exc
    return str(settings["runbook_url_base"]).rstrip("/")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a committed file is out of date")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="directory to write (default: dashboards/)")
    parser.add_argument(
        "--settings",
        type=Path,
        help="the overrides file of rules/generate.py --settings (its runbook_url_base)",
    )
    args = parser.parse_args(argv)
    runbook_base = RUNBOOK_BASE_URL
    if args.settings is not None:
        try:
            runbook_base = settings_runbook_base(args.settings)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return _generate(args.out, args.check, runbook_base)


def _generate(out: Path, check: bool, runbook_base: str) -> int:
    stale = []
    for spec in DASHBOARDS:
        path = out / spec.file
        text = render(spec, runbook_base)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date (run python -m dashboards.generate): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
