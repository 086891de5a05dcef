"""Load a YAML file into any pydantic model, with errors that point into the file.

Every problem becomes one line ``{file}:{line}:{column} {key.path}: {message}``, for example::

    station.yaml:14:5 camera.source: 'genicm' is not one of folder, opencv
    station.yaml:20:3 mqtt.prot: unknown key 'prot' (allowed: base_topic, client_id, ...)

All problems of a file are reported at once, sorted by position. Lines and columns are 1-based.
The loader knows nothing about stations: the product bundle's manifest and thresholds use it too.
"""

from __future__ import annotations

import datetime
import difflib
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, RootModel, ValidationError
from pydantic_core import ErrorDetails

from inspectd.config.model_walk import (
    KeyPath,
    Walk,
    allowed_keys,
    allowed_values,
    is_model,
    union_tags,
    walk_loc,
)

__all__ = ["ConfigError", "load_yaml_model"]

M = TypeVar("M", bound=BaseModel)

Pos = tuple[int, int]

_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_NULL_TAG = "tag:yaml.org,2002:null"
_MISSING = object()


class ConfigError(Exception):
    """A config file that cannot be used; ``errors`` holds one full message line per problem."""

    def __init__(self, path: str | os.PathLike[str], errors: list[str]) -> None:
        self.path = Path(path)
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.errors))


def load_yaml_model(
    path: str | os.PathLike[str], model: type[M], *, context: dict[str, Any] | None = None
) -> M:
    """Read ``path``, parse it as YAML and validate it with ``model``.

    ``context`` goes to ``model.model_validate``; it always holds ``base_dir`` (the absolute
    directory of the file, for resolving relative paths) unless the caller sets its own.
    Raises ConfigError for a missing or unreadable file, bad YAML, duplicate keys, and every
    validation error.
    """
    path = Path(path)
    name = os.fspath(path)
    doc = _parse_file(path, name)
    if not (isinstance(model, type) and issubclass(model, RootModel)):
        _require_mapping(doc, name)
    ctx: dict[str, Any] = {"base_dir": path.absolute().parent}
    ctx.update(context or {})
    try:
        result = model.model_validate(doc.data, context=ctx)
    except ValidationError as exc:
        problems = doc.problems + _convert_errors(exc, model, doc)
        raise ConfigError(path, _render(name, problems)) from None
    if doc.problems:
        raise ConfigError(path, _render(name, doc.problems))
    return result


# ---------------------------------------------------------------------------------------------
# Reading: plain dicts/lists plus the position of every value (and of every key)


@dataclass
class _Document:
    data: Any
    root: Pos = (1, 1)
    value_pos: dict[KeyPath, Pos] = field(default_factory=dict)
    key_pos: dict[KeyPath, Pos] = field(default_factory=dict)
    # (position, key path, message) found while reading, e.g. duplicate keys
    problems: list[tuple[Pos, KeyPath, str]] = field(default_factory=list)


def _mark(node: yaml.Node) -> Pos:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def _parse_file(path: Path, name: str) -> _Document:
    if path.is_dir():
        raise ConfigError(path, [f"{name}: is a directory, not a file"])
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, [f"{name}: file not found"]) from None
    except PermissionError:
        raise ConfigError(path, [f"{name}: permission denied"]) from None
    except OSError as exc:
        raise ConfigError(path, [f"{name}: cannot read: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, col = _line_col(raw[: exc.start].decode("utf-8", "replace"))
        msg = f"{name}:{line}:{col}: not UTF-8 text (byte 0x{raw[exc.start]:02x})"
        raise ConfigError(path, [msg]) from None

    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None or (isinstance(root, yaml.ScalarNode) and root.tag == _NULL_TAG):
            return _Document(data=None)
        builder = _Builder(loader)
        builder.find_duplicates(root, ())
        data = builder.build(root, ())
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(path, [_yaml_error_line(name, exc)]) from None
    except yaml.YAMLError as exc:  # ReaderError: a character YAML does not allow
        position = getattr(exc, "position", None)
        if isinstance(position, int):
            line, col = _line_col(text[:position])
            raise ConfigError(path, [f"{name}:{line}:{col}: YAML error: {exc}"]) from None
        raise ConfigError(path, [f"{name}: YAML error: {exc}"]) from None
    finally:
        loader.dispose()
    return _Document(
        data=data,
        root=_mark(root),
        value_pos=builder.value_pos,
        key_pos=builder.key_pos,
        problems=builder.problems,
    )


def _line_col(before: str) -> Pos:
    return (before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1)


def _yaml_error_line(name: str, exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else name
    kind = (
        "YAML error" if isinstance(exc, yaml.constructor.ConstructorError) else "YAML syntax error"
    )
    problem = exc.problem or exc.context or "invalid YAML"
    msg = f"{where}: {kind}: {problem}"
    if exc.problem and exc.context and exc.context_mark is not None:
        cm = exc.context_mark
        if mark is None or (cm.line, cm.column) != (mark.line, mark.column):
            msg += f" ({exc.context} at line {cm.line + 1}, column {cm.column + 1})"
    return msg


class _Builder:
    """Turns a composed YAML node tree into plain data, recording positions on the way."""

    def __init__(self, loader: yaml.SafeLoader) -> None:
        self.loader = loader
        self.value_pos: dict[KeyPath, Pos] = {}
        self.key_pos: dict[KeyPath, Pos] = {}
        self.problems: list[tuple[Pos, KeyPath, str]] = []
        self._seen: set[int] = set()
        self._active: set[int] = set()

    def _key(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain value, not a list or mapping", node.start_mark
            )
        return self.loader.construct_object(node, deep=True)

    def find_duplicates(self, node: yaml.Node, path: KeyPath) -> None:
        """Report keys given twice in one mapping (PyYAML would silently keep the last).

        Runs before merge keys (``<<``) are flattened, so overriding a merged key is fine.
        """
        if id(node) in self._seen:
            return
        self._seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.find_duplicates(item, path + (i,))
        elif isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Node] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    self.find_duplicates(value_node, path)
                    continue
                key = self._key(key_node)
                try:
                    earlier = first.get(key)
                except TypeError:  # an unhashable key: construct_object will complain later
                    continue
                if earlier is None:
                    first[key] = key_node
                else:
                    msg = (
                        f"duplicate key {_show_key(key)} (first given at line {_mark(earlier)[0]})"
                    )
                    self.problems.append((_mark(key_node), path + (key,), msg))
                self.find_duplicates(value_node, path + (key,))

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        self.value_pos[path] = _mark(node)
        if isinstance(node, yaml.ScalarNode) or node.tag not in (_MAP_TAG, _SEQ_TAG):
            return self.loader.construct_object(node, deep=True)
        if id(node) in self._active:
            raise yaml.constructor.ConstructorError(
                None, None, "an alias refers to a node that contains it", node.start_mark
            )
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
            self.loader.flatten_mapping(node)  # resolve "<<: *anchor" merges; explicit keys win
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self._key(key_node)
                self.key_pos[path + (key,)] = _mark(key_node)
                result[key] = self.build(value_node, path + (key,))
            return result
        finally:
            self._active.discard(id(node))


def _require_mapping(doc: _Document, name: str) -> None:
    if doc.data is None:
        raise ConfigError(
            name, [f"{name}:1:1: the file is empty; expected a mapping of 'key: value' lines"]
        )
    if not isinstance(doc.data, dict):
        line, col = doc.root
        msg = (
            f"{name}:{line}:{col}: the top level must be a mapping of 'key: value' lines, "
            f"not {_kind(doc.data)}"
        )
        raise ConfigError(name, [msg])


def _render(name: str, problems: list[tuple[Pos, KeyPath, str]]) -> list[str]:
    lines: list[str] = []
    for (line, col), keys, msg in sorted(problems, key=lambda p: p[0]):
        text = (
            f"{name}:{line}:{col} {_dotted(keys)}: {msg}" if keys else f"{name}:{line}:{col}: {msg}"
        )
        if text not in lines:
            lines.append(text)
    return lines


# ---------------------------------------------------------------------------------------------
# Showing values and keys


def _show(value: Any) -> str:
    """A bad value as the user wrote it, in YAML spelling where it differs from Python's."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _show_key(key: Any) -> str:
    return f"'{key}'" if isinstance(key, str) else _show(key)


def _plain(value: Any) -> str:
    """An allowed value in a list: no quotes."""
    if isinstance(value, Enum):
        value = value.value
    return value if isinstance(value, str) else _show(value)


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, str):
        return f"a string ({_show(value)})"
    return f"the value {_show(value)}"


def _dotted(keys: KeyPath) -> str:
    out = ""
    for key in keys:
        if isinstance(key, int) and not isinstance(key, bool):
            out += f"[{key}]"
        else:
            out += ("." if out else "") + (key if isinstance(key, str) else _show(key))
    return out


def _split_expected(text: str) -> list[str]:
    """ "'a', 'b' or 'c'" (pydantic's ctx) -> ["a", "b", "c"]."""
    parts: list[str] = []
    for chunk in text.replace(" or ", ", ").split(", "):
        chunk = chunk.strip()
        if len(chunk) >= 2 and chunk[0] == chunk[-1] and chunk[0] in "'\"":
            chunk = chunk[1:-1]
        if chunk:
            parts.append(chunk)
    return parts


# ---------------------------------------------------------------------------------------------
# Turning pydantic errors into lines

_TYPE_WORDS = {
    "int_type": "a valid integer",
    "int_parsing": "a valid integer",
    "int_from_float": "a valid integer",
    "int_parsing_size": "a valid integer",
    "float_type": "a valid number",
    "float_parsing": "a valid number",
    "decimal_type": "a valid number",
    "decimal_parsing": "a valid number",
    "finite_number": "a finite number",
    "bool_type": "a valid boolean (true or false)",
    "bool_parsing": "a valid boolean (true or false)",
    "string_type": "a string",
    "bytes_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "frozen_set_type": "a list",
    "iterable_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dataclass_type": "a mapping",
    "path_type": "a valid path",
    "none_required": "null",
}

_BOUNDS = {
    "greater_than": (">", "gt"),
    "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("<=", "le"),
}


def _lookup(data: Any, keys: KeyPath) -> Any:
    for key in keys:
        if isinstance(data, dict) and key in data:
            data = data[key]
        elif isinstance(data, list) and isinstance(key, int) and 0 <= key < len(data):
            data = data[key]
        else:
            return _MISSING
    return data


def _position(doc: _Document, keys: KeyPath, *, at_key: bool) -> Pos:
    if at_key and keys in doc.key_pos:
        return doc.key_pos[keys]
    while keys and keys not in doc.value_pos:
        keys = keys[:-1]
    return doc.value_pos.get(keys, doc.root)


def _message(err: ErrorDetails, value: Any, walk: Walk) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    shown = _show(value)
    if kind in ("literal_error", "enum"):
        allowed = allowed_values(walk.tp)
        names = (
            [_plain(v) for v in allowed] if allowed else _split_expected(ctx.get("expected", ""))
        )
        return f"{shown} is not one of {', '.join(names)}"
    if kind in _TYPE_WORDS:
        msg = f"{shown} is not {_TYPE_WORDS[kind]}"
        if kind == "string_type" and isinstance(value, (int, float, bool)):
            msg += ' (put it in quotes: "...")'
        return msg
    if kind in _BOUNDS:
        op, name = _BOUNDS[kind]
        limit = ctx.get(name)
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)  # "must be >= 0", not ">= 0.0"
        return f"{shown} is out of range: must be {op} {_show(limit)}"
    if kind == "multiple_of":
        return f"{shown} is not a multiple of {_show(ctx.get('multiple_of'))}"
    if kind in ("string_too_short", "too_short"):
        n = ctx.get("min_length")
        unit = "character" if kind == "string_too_short" else "item"
        return f"{shown} is too short: must have at least {n} {unit}{'' if n == 1 else 's'}"
    if kind in ("string_too_long", "too_long"):
        n = ctx.get("max_length")
        unit = "character" if kind == "string_too_long" else "item"
        return f"{shown} is too long: must have at most {n} {unit}{'' if n == 1 else 's'}"
    if kind == "string_pattern_mismatch":
        return f"{shown} does not match the pattern {ctx.get('pattern')}"
    msg = str(err.get("msg", ""))
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if kind == "value_error" or kind == "assertion_error":
        # a rule about a whole section reads better without the section dumped in front of it
        return msg if isinstance(value, (dict, list)) else f"{shown}: {msg}"
    return f"{shown}: {msg[:1].lower()}{msg[1:]}"


def _convert_errors(
    exc: ValidationError, model: type[BaseModel], doc: _Document
) -> list[tuple[Pos, KeyPath, str]]:
    errors = exc.errors(include_url=False)
    walks = [walk_loc(model, tuple(err["loc"])) for err in errors]

    # An untagged union (e.g. ``int | str``) fails once per member. Keep the members' errors that
    # are about the value (a bound, a pattern) over "wrong type" ones; if only type errors are
    # left, say "is not a valid integer or a string" once.
    groups: dict[KeyPath, list[int]] = {}
    for i, walk in enumerate(walks):
        if walk.union_at is not None:
            groups.setdefault(walk.union_at, []).append(i)
    skip: set[int] = set()
    merged: dict[int, str] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        typed = [i for i in members if errors[i]["type"] in _TYPE_WORDS]
        if len(typed) < len(members):
            skip.update(typed)
        else:
            words = list(dict.fromkeys(_TYPE_WORDS[errors[i]["type"]] for i in members))
            value = _lookup(doc.data, walks[members[0]].keys)
            value = errors[members[0]]["input"] if value is _MISSING else value
            merged[members[0]] = f"{_show(value)} is not {' or '.join(words)}"
            skip.update(members[1:])

    problems: list[tuple[Pos, KeyPath, str]] = []
    for i, (err, walk) in enumerate(zip(errors, walks, strict=True)):
        if i in skip:
            continue
        kind = err["type"]
        keys = walk.keys
        if kind == "missing":
            problems.append(
                (
                    _position(doc, keys[:-1], at_key=True),
                    keys,
                    f"required key {_show_key(keys[-1] if keys else '?')} is missing",
                )
            )
            continue
        if kind == "extra_forbidden":
            key = keys[-1] if keys else "?"
            parent = walk_loc(model, tuple(err["loc"])[:-1]).tp
            msg = f"unknown key {_show_key(key)}"
            if is_model(parent):
                allowed = allowed_keys(parent)
                msg += f" (allowed: {', '.join(allowed)})"
                close = difflib.get_close_matches(str(key), allowed, n=1)
                if close:
                    msg += f"; did you mean '{close[0]}'?"
            problems.append((_position(doc, keys, at_key=True), keys, msg))
            continue
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            ctx = err.get("ctx") or {}
            disc = walk.disc or _split_expected(str(ctx.get("discriminator", "?")))[0]
            tags = [_plain(t) for t in union_tags(walk.tp, disc)] or _split_expected(
                str(ctx.get("expected_tags", ""))
            )
            if kind == "union_tag_not_found":
                msg = f"missing key '{disc}' (one of {', '.join(tags)})"
                problems.append((_position(doc, keys, at_key=True), keys + (disc,), msg))
            else:
                value = _lookup(doc.data, keys + (disc,))
                value = ctx.get("tag") if value is _MISSING else value
                msg = f"{_show(value)} is not one of {', '.join(tags)}"
                problems.append((_position(doc, keys + (disc,), at_key=False), keys + (disc,), msg))
            continue
        value = _lookup(doc.data, keys)
        if value is _MISSING:
            value = err.get("input")
        msg = merged.get(i) or _message(err, value, walk)
        problems.append((_position(doc, keys, at_key=False), keys, msg))
    return problems
