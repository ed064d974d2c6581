"""Where the kit's shipped files are: the rules, the Alertmanager config, the dashboards and the demo's
Express app live in the repository, not in the installed package.

``tierwatch demo``, the drills and the benches run from a clone of the repository (or with
``TIERWATCH_KIT_DIR`` naming one); from an installed wheel alone they stop with NOT_A_CLONE.
"""

from __future__ import annotations

import os
from pathlib import Path

NOT_A_CLONE = (
    "tierwatch demo runs from a clone of the tierwatch repository (it needs rules/, alertmanager/ and "
    "demo/app/ from it): run it there, or set TIERWATCH_KIT_DIR to a clone"
)


class KitMissing(RuntimeError):
    """The kit's files are not where the lab looks for them."""


def kit_root() -> Path:
    """The repository root: ``TIERWATCH_KIT_DIR``, else the clone this package was imported from."""
    return Path(os.environ.get("TIERWATCH_KIT_DIR") or Path(__file__).resolve().parents[2])


def kit_dir(name: str) -> Path:
    """A directory of the kit (``rules``, ``alertmanager``, ``dashboards``, ``demo/app``); raises
    KitMissing with NOT_A_CLONE when it is not there."""
    path = kit_root() / name
    if not path.is_dir():
        raise KitMissing(f"{path} not found: {NOT_A_CLONE}")
    return path


def kit_problem() -> str | None:
    """NOT_A_CLONE (with the path looked at) when the demo's files are missing, else None."""
    for name in ("rules", "alertmanager", "demo/app"):
        try:
            kit_dir(name)
        except KitMissing as exc:
            return str(exc)
    return None
