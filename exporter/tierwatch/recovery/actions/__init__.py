"""Recovery actions, one module each, looked up by name in the action catalogue
(tierwatch.action_catalog); a module is imported only when its action first runs."""

from __future__ import annotations

import importlib

from ...action_catalog import ACTIONS
from .base import Action, ActionContext, AlertRef, Outcome

ACTION_CLASSES: dict[str, str] = {name: spec.implementation for name, spec in ACTIONS.items()}


def load_action(name: str) -> Action:
    """A new instance of the named action (one per run: an action may keep state while it runs)."""
    module_name, _, class_name = ACTION_CLASSES[name].partition(":")
    cls: type[Action] = getattr(importlib.import_module(module_name), class_name)
    return cls()


__all__ = ["ACTION_CLASSES", "Action", "ActionContext", "AlertRef", "Outcome", "load_action"]
