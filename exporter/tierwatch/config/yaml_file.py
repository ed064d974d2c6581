"""Read a config file as YAML, refusing what would hurt: too large, not UTF-8, too deep, alias bombs,
alias cycles and duplicate keys. Errors are ``FILE[:LINE]: what is wrong`` and never quote the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

MAX_CONFIG_BYTES = 1024 * 1024
MAX_DEPTH = 32  # nested mappings/sequences, the top-level mapping being the first
MAX_NODES = 1_000_000  # values once aliases are expanded
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlFileError(Exception):
    """The file cannot be read as a config; ``problem`` is one ``FILE[:LINE]: ...`` line."""

    def __init__(self, problem: str):
        super().__init__(problem)
        self.problem = problem


@dataclass(frozen=True)
class DuplicateKey:
    """A key given twice in one mapping: ``path`` leads to the second one."""

    path: tuple[str | int, ...]
    key: str
    first_line: int
    line: int


@dataclass(frozen=True)
class YamlDocument:
    """The parsed data, its node tree (for line numbers) and the duplicate keys found in it."""

    data: Any
    root: yaml.Node | None
    duplicates: list[DuplicateKey]


class _TooDeep(Exception):
    def __init__(self, mark: yaml.Mark):
        self.mark = mark


class _Bounded(Composer, SafeConstructor):
    """The (recursive) composer stops at MAX_DEPTH instead of the interpreter's recursion limit, and
    scalar errors (impossible dates, 5000-digit integers) become YAML errors with a line."""

    _depth = 0
    has_aliases = False

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if not self.check_event(yaml.MappingStartEvent, yaml.SequenceStartEvent):  # type: ignore[attr-defined]
            if self.check_event(yaml.AliasEvent):  # type: ignore[attr-defined]
                self.has_aliases = True
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooDeep(self.peek_event().start_mark)  # type: ignore[attr-defined]
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except ValueError:
            raise ConstructorError(None, None, "expected a valid value", node.start_mark) from None


class _PythonLoader(_Bounded, Reader, Scanner, Parser, Resolver):
    def __init__(self, stream: str):
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)


_Loader: Callable[[str], _Bounded] = _PythonLoader
try:  # libyaml parses ~6 times faster; its events are still composed above, in Python, within bounds
    from yaml.cyaml import CParser

    class _LibyamlLoader(_Bounded, CParser, Resolver):  # type: ignore[misc]
        def __init__(self, stream: str):
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

    _Loader = _LibyamlLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    pass


def read_yaml_file(file: Path) -> YamlDocument:
    """Parse ``file`` within the limits above; raises YamlFileError."""
    text = _read_text(file)
    loader: Any = _Loader(text)
    try:
        try:
            root = loader.get_single_node()
        except _TooDeep as exc:
            raise YamlFileError(
                f"{file}:{exc.mark.line + 1}: nested deeper than {MAX_DEPTH} levels (the limit of a config)"
            ) from None
        if root is None:
            return YamlDocument(None, None, [])
        if loader.has_aliases:  # else the tree is as small and shallow as the text
            _check_expanded_size(file, root)
        duplicates = _duplicate_keys(root)  # before constructing: merge keys rewrite the node tree
        data = loader.construct_document(root)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{file}:{mark.line + 1}" if mark else str(file)
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise YamlFileError(f"{where}: invalid YAML: {problem}") from None
    finally:
        loader.dispose()
    return YamlDocument(data, root, duplicates)


def _read_text(file: Path) -> str:
    try:
        size = os.stat(file).st_size
        if size > MAX_CONFIG_BYTES:
            raise YamlFileError(_too_large(file))
        with open(file, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)  # the size may have changed, or it is no regular file
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise YamlFileError(f"{file}: cannot read config file: {reason}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise YamlFileError(_too_large(file))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise YamlFileError(f"{file}:{line}: not valid UTF-8 text (a config must be UTF-8)") from None


def _too_large(file: Path) -> str:
    return f"{file}: config file is larger than the limit of {MAX_CONFIG_BYTES // (1024 * 1024)} MiB"


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expanded_size(file: Path, root: yaml.Node) -> None:
    """Refuse alias cycles, and trees that aliases expand beyond MAX_NODES values or MAX_DEPTH levels
    (a few kB of anchors can stand for billions of values). Iterative, each node visited once."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_nodes: set[int] = set()  # the ancestors of the node being visited
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_nodes.discard(key)
            children = _children(node)
            size[key] = min(MAX_NODES + 1, 1 + sum(size[id(c)] for c in children))
            is_collection = not isinstance(node, yaml.ScalarNode)
            depth[key] = is_collection + max((depth[id(c)] for c in children), default=0)
            if size[key] > MAX_NODES:
                raise YamlFileError(
                    f"{file}:{node.start_mark.line + 1}: too many nodes once aliases are expanded "
                    f"(the limit is {MAX_NODES})"
                )
            if depth[key] > MAX_DEPTH:
                raise YamlFileError(
                    f"{file}:{node.start_mark.line + 1}: nested deeper than {MAX_DEPTH} levels once "
                    "aliases are expanded (the limit of a config)"
                )
            continue
        if key in size:
            continue
        if key in open_nodes:
            line = node.start_mark.line + 1
            raise YamlFileError(f"{file}:{line}: an alias refers to a node that contains it")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in size)


def _duplicate_keys(root: yaml.Node) -> list[DuplicateKey]:
    """Every scalar key given twice in one mapping (merge keys ``<<`` excepted), in file order."""
    found: list[DuplicateKey] = []
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, tuple[str | int, ...]]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        children: list[tuple[yaml.Node, tuple[str | int, ...]]] = []
        if isinstance(node, yaml.SequenceNode):
            children = [(child, (*path, i)) for i, child in enumerate(node.value)]
        elif isinstance(node, yaml.MappingNode):
            first_lines: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                    children.append((value_node, path))
                    continue
                line = key_node.start_mark.line + 1
                ident = (key_node.tag, key_node.value)
                if ident in first_lines:
                    key_path = (*path, key_node.value)
                    found.append(DuplicateKey(key_path, key_node.value, first_lines[ident], line))
                else:
                    first_lines[ident] = line
                children.append((value_node, (*path, key_node.value)))
        stack.extend(reversed(children))
    found.sort(key=lambda d: d.line)
    return found
