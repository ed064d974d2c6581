"""Prometheus file_sd: JSON or YAML files holding a list of ``{targets: [host:port, ...], labels: {...}}``.

Polled every ``refresh_interval`` (and at start): every file the patterns match is read (at most
``MAX_FILE_BYTES``) and parsed again only when its bytes changed. As in Prometheus, a file that cannot
be read or is not in file_sd format keeps the targets it gave last time (so a half-written file drops
nothing), and the targets of a file that no longer exists, or no longer matches, are dropped. Write the
files atomically (a new file renamed into place): a YAML list cut short can still be valid YAML.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..config import FileSDConfig
from .targets import Found

MAX_FILE_BYTES = 8 * 1024 * 1024
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
MAX_LABEL_VALUE = 1024


class FileSDError(Exception):
    """A file could not be used; ``reason`` never quotes its content."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Refresh:
    """One refresh of a source: everything it gives now, and what failed (where, reason)."""

    found: list[Found] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _File:
    digest: bytes
    found: list[Found]


class FileSD:
    """The targets of one ``file_sd`` entry; ``refresh`` reads the files (blocking: run it in a thread)."""

    def __init__(self, config: FileSDConfig):
        self.config = config
        self._files: dict[str, _File] = {}

    def paths(self) -> list[str]:
        """The files the patterns match now, sorted."""
        found: set[str] = set()
        for pattern in self.config.files:
            found.update(p for p in glob.glob(pattern) if os.path.isfile(p))
        return sorted(found)

    def refresh(self) -> Refresh:
        """Read every matching file again; a file that fails keeps its previous good groups."""
        result = Refresh()
        files: dict[str, _File] = {}
        for path in self.paths():
            previous = self._files.get(path)
            try:
                data = _read(path)
                digest = hashlib.sha256(data).digest()
                if previous is not None and previous.digest == digest:
                    files[path] = previous
                    continue
                files[path] = _File(digest, parse_file_sd(path, data))
            except FileNotFoundError:
                continue  # removed between the glob and the read: its targets go
            except FileSDError as exc:
                result.errors.append((path, exc.reason))
                if previous is not None:
                    files[path] = previous
        self._files = files
        result.found = [item for path in sorted(files) for item in files[path].found]
        return result


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise FileSDError(f"cannot read the file ({type(exc).__name__})") from None
    if len(data) > MAX_FILE_BYTES:
        raise FileSDError(f"file larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
    return data


def parse_file_sd(path: str, data: bytes) -> list[Found]:
    """The addresses of a file_sd file, by its extension (.json, or .yml/.yaml); raises FileSDError."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise FileSDError("not UTF-8") from None
    if path.lower().endswith(".json"):
        try:
            groups: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FileSDError(f"not valid JSON (line {exc.lineno}: {exc.msg})") from None
    else:
        try:
            groups = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise FileSDError(
                f"not valid YAML (line {mark.line + 1})" if mark else "not valid YAML"
            ) from None
        if groups is None:  # an empty YAML file: no groups, as in Prometheus
            groups = []
    if not isinstance(groups, list):
        raise FileSDError("expected a list of target groups ({targets: [...], labels: {...}})")
    found: list[Found] = []
    for gi, group in enumerate(groups):
        where = f"group {gi}"
        if not isinstance(group, dict):
            raise FileSDError(f"{where}: expected a mapping with targets and labels")
        unknown = set(group) - {"targets", "labels"}
        if unknown:
            raise FileSDError(f"{where}: unknown key; expected targets and labels")
        targets = group.get("targets") or []
        labels = group.get("labels") or {}
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise FileSDError(f"{where}: targets: expected a list of host:port strings")
        if not isinstance(labels, dict):
            raise FileSDError(f"{where}: labels: expected a mapping of label names to strings")
        for key, value in labels.items():
            if not isinstance(key, str) or not LABEL_NAME.match(key):
                raise FileSDError(f"{where}: labels: expected label names of letters, digits and '_'")
            if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE:
                raise FileSDError(f"{where}: labels: expected string values (at most {MAX_LABEL_VALUE})")
        found += [Found(t, f"{path}: {where} target {ti}", labels) for ti, t in enumerate(targets)]
    return found
