"""Configuration files operators edit (``scoring.yaml``, ``channels.yaml``): YAML read into
pydantic models, every mistake named by its file and line.

``read_mapping`` parses the text (a YAML error names its line; two equal keys are refused,
since ``safe_load`` would silently keep the last) and ``line_of``/``describe`` turn a
pydantic error's location into the line an operator edits and a readable message.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode


def read_mapping(text: str, name: str, error: type[ValueError], *, what: str, shape: str) -> tuple[Node, dict]:
    """The YAML ``text`` as its node tree and its data, a mapping; ``error`` (built as
    ``error(message, [(line, problem)])``) otherwise. ``what`` names the file's kind in
    messages ("policy"), ``shape`` says what the mapping must hold."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = f"{exc.problem or 'invalid YAML'}" + (f" ({exc.context})" if exc.context else "")
        raise error(f"{name}:{line}: invalid YAML: {problem}", [(line, problem)]) from exc
    except yaml.YAMLError as exc:
        raise error(f"{name}: invalid YAML: {exc}") from exc
    if root is None or not isinstance(data, dict):
        raise error(f"{name}:1: the {what} file must be a mapping with {shape}")
    _refuse_duplicate_keys(root, name, error, what)
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


def _refuse_duplicate_keys(node: Node, name: str, error: type[ValueError], what: str) -> None:
    # safe_load keeps the last of two equal keys silently; an operator almost never means it.
    if isinstance(node, MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.value in seen:
                line = key.start_mark.line + 1
                problem = f"duplicate key {key.value!r}"
                raise error(f"{name}:{line}: invalid {what}: {problem}", [(line, problem)])
            seen.add(key.value)
            _refuse_duplicate_keys(value, name, error, what)
    elif isinstance(node, SequenceNode):
        for item in node.value:
            _refuse_duplicate_keys(item, name, error, what)
