"""Configuration files operators edit (``scoring.yaml``, ``channels.yaml``): YAML read into
pydantic models, every mistake named by its file and line.

``read_text`` reads the file (UTF-8, or it names the line of the first byte that is not),
``read_mapping`` parses the text (a YAML error names its line; two equal keys are refused,
since ``safe_load`` would silently keep the last; so are anchors and aliases, see
``_Loader``) and ``line_of``/``describe`` turn a pydantic error's location into the line an
operator edits and a readable message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

ALIASES_REFUSED = "YAML anchors and aliases (&name, *name) are not supported"


class _AliasRefused(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


class _Loader(yaml.SafeLoader):
    """``SafeLoader`` refusing anchors and aliases. Neither file needs them (channel rules
    share values through named lists), and an alias is a graph, not a tree: one can refer
    to itself, and nine aliases of nine aliases of … make a file of a few lines that
    expands to 9^9 values once validated. Refused at the first anchor, nothing is expanded."""

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _AliasRefused(event.start_mark.line + 1)
        return super().compose_node(parent, index)


def read_text(path: Path, error: type[ValueError], *, what: str) -> str:
    """The UTF-8 text of the file at ``path``; ``error`` naming the file (and the line of
    the first byte that is not UTF-8) otherwise."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} file: {exc.strerror or exc}") from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        problem = (f"the {what} file is not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {column}): "
                   f"save it as UTF-8")
        raise error(f"{path}:{line}: {problem}", [(line, problem)]) from None


def read_mapping(text: str, name: str, error: type[ValueError], *, what: str, shape: str,
                 reuse: str = "write the value out where it is used") -> tuple[Node, dict]:
    """The YAML ``text`` as its node tree and its data, a mapping; ``error`` (built as
    ``error(message, [(line, problem)])``) otherwise. ``what`` names the file's kind in
    messages ("policy"), ``shape`` says what the mapping must hold, ``reuse`` how to say a
    value twice without an alias."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        _refuse_duplicate_keys(root, name, error, what)
        data = loader.construct_document(root) if root is not None else None
    except _AliasRefused as exc:
        problem = f"{ALIASES_REFUSED}: {reuse}"
        raise error(f"{name}:{exc.line}: invalid {what}: {problem}", [(exc.line, problem)]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = f"{exc.problem or 'invalid YAML'}" + (f" ({exc.context})" if exc.context else "")
        raise error(f"{name}:{line}: invalid YAML: {problem}", [(line, problem)]) from exc
    except yaml.YAMLError as exc:
        raise error(f"{name}: invalid YAML: {exc}") from exc
    except RecursionError:
        problem = "nested too deeply"
        raise error(f"{name}: invalid {what}: {problem}", [(None, problem)]) from None
    finally:
        loader.dispose()
    if root is None or not isinstance(data, dict):
        raise error(f"{name}:1: the {what} file must be a mapping with {shape}")
    return root, data


def describe(error: dict[str, Any], where: str) -> str:
    """A pydantic error as an operator reads it, after ``where`` (the field's path)."""
    loc = tuple(error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field (check its spelling and indentation)"
    elif error["type"] == "string_type" and loc == ("version",):
        message = "must be a string: quote it, e.g. version: \"2026-11-25.1\""
    elif error["type"] == "string_type" and isinstance(error.get("input"), bool | int | float):
        message = f"must be a string, but YAML read {error['input']!r}: quote it (e.g. \"NO\", \"on\")"
    elif isinstance(error.get("input"), str | int | float) and error["type"] != "missing" \
            and repr(error["input"]) not in message:
        message = f"{message} (got {error['input']!r})"
    return f"{where}: {message}"


def dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def line_of(root: Node, loc: tuple[Any, ...]) -> int:
    """The line of the YAML node an error at ``loc`` is about: the key's node for a mapping
    entry (the line an operator edits), the item for a list, and for a missing field the
    key of the section that lacks it."""
    node, anchor = root, root
    for index, part in enumerate(loc):
        if isinstance(node, MappingNode):
            entry = next(((key, value) for key, value in node.value if key.value == str(part)), None)
            if entry is None:
                return anchor.start_mark.line + 1
            key, value = entry
            if index == len(loc) - 1 or not isinstance(value, MappingNode | SequenceNode):
                return key.start_mark.line + 1
            node, anchor = value, key
        elif isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = anchor = node.value[part]
        else:
            return anchor.start_mark.line + 1
    return node.start_mark.line + 1


def _refuse_duplicate_keys(root: Node | None, name: str, error: type[ValueError], what: str) -> None:
    # safe_load keeps the last of two equal keys silently; an operator almost never means it.
    # Each node is walked once, without recursion (a tree here, as aliases are refused).
    stack, seen = [root] if root is not None else [], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, MappingNode):
            keys: set[str] = set()
            for key, _ in node.value:
                if not isinstance(key, ScalarNode):
                    continue  # a list or mapping as a key: the constructor refuses it
                if key.value in keys:
                    line = key.start_mark.line + 1
                    problem = f"duplicate key {key.value!r}"
                    raise error(f"{name}:{line}: invalid {what}: {problem}", [(line, problem)])
                keys.add(key.value)
            stack.extend(value for _, value in reversed(node.value))
        elif isinstance(node, SequenceNode):
            stack.extend(reversed(node.value))
