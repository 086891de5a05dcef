"""Walking a config model class along a pydantic error's location: which model, field and
allowed keys or values an error is about (the loader's messages name them)."""

from __future__ import annotations

import collections.abc
import types
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, RootModel

KeyPath = tuple[Any, ...]  # where a value sits in a config: its keys and list indexes
NONE_TYPE = type(None)


def _unwrap(tp: Any, disc: str | None) -> tuple[Any, str | None]:
    """Strip Annotated (noting a discriminator) and Optional."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp, *meta = get_args(tp)
            for item in meta:
                found = getattr(item, "discriminator", None)
                found = getattr(found, "discriminator", found)  # pydantic.Discriminator
                if isinstance(found, str):
                    disc = found
            continue
        if origin in (Union, types.UnionType):
            members = [a for a in get_args(tp) if a is not NONE_TYPE]
            if len(members) == 1:
                tp = members[0]
                continue
        return tp, disc


def is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _model_field(model: type[BaseModel], key: Any) -> Any:
    for name, info in model.model_fields.items():
        if key == (info.alias or name):
            return info
    return None


def allowed_keys(model: type[BaseModel]) -> list[str]:
    return sorted(info.alias or name for name, info in model.model_fields.items())


def _tags(member: Any, disc: str) -> list[Any]:
    member, _ = _unwrap(member, None)
    if is_model(member):
        info = _model_field(member, disc)
        if info is not None:
            ann, _ = _unwrap(info.annotation, None)
            if get_origin(ann) is Literal:
                return list(get_args(ann))
    return []


def _label_matches(member: Any, label: Any) -> bool:
    """Pydantic names union members in a loc: 'int', 'constrained-str', 'FolderCamera', ..."""
    if not isinstance(label, str):
        return False
    member, _ = _unwrap(member, None)
    base = get_origin(member) or member
    names = {getattr(base, "__name__", None), str(member)}
    label = label.removeprefix("constrained-")
    return label in names or label.split("[")[0] in names


@dataclass
class Walk:
    keys: KeyPath  # the loc without union member labels: a path into the data
    tp: Any  # the annotation at the end of the loc
    disc: str | None  # its discriminator, if it is a tagged union
    union_at: KeyPath | None = None  # data path of the first untagged union the loc went through


def walk_loc(model: Any, loc: tuple[Any, ...]) -> Walk:
    tp: Any = model
    disc: str | None = None
    keys: list[Any] = []
    union_at: KeyPath | None = None
    for elem in loc:
        tp, disc = _unwrap(tp, disc)
        while is_model(tp) and issubclass(tp, RootModel):
            tp, disc = _unwrap(tp.model_fields["root"].annotation, None)
        origin = get_origin(tp)
        if origin in (Union, types.UnionType):
            members = [a for a in get_args(tp) if a is not NONE_TYPE]
            if disc:
                chosen = [m for m in members if elem in _tags(m, disc)]
            else:
                chosen = [m for m in members if _label_matches(m, elem)]
                if union_at is None:
                    union_at = tuple(keys)
            tp, disc = (chosen[0] if chosen else Any), None
            continue  # the tag or label is not a key in the data
        keys.append(elem)
        disc = None
        if is_model(tp):
            info = _model_field(tp, elem)
            tp = Any if info is None else info.annotation
            disc = None if info is None else _field_discriminator(info)
        elif origin in (list, set, frozenset, collections.abc.Sequence, collections.abc.Set):
            args = get_args(tp)
            tp = args[0] if args else Any
        elif origin is tuple:
            args = get_args(tp)
            if len(args) == 2 and args[1] is Ellipsis:
                tp = args[0]
            elif isinstance(elem, int) and 0 <= elem < len(args):
                tp = args[elem]
            else:
                tp = Any
        elif origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
            args = get_args(tp)
            tp = args[1] if len(args) == 2 else Any
        else:
            tp = Any
    tp, disc = _unwrap(tp, disc)
    return Walk(keys=tuple(keys), tp=tp, disc=disc, union_at=union_at)


def _field_discriminator(info: Any) -> str | None:
    found = getattr(info, "discriminator", None)
    found = getattr(found, "discriminator", found)
    return found if isinstance(found, str) else None


def allowed_values(tp: Any) -> list[Any] | None:
    if get_origin(tp) is Literal:
        return list(get_args(tp))
    if isinstance(tp, type) and issubclass(tp, Enum):
        return [m.value for m in tp]
    return None


def union_tags(tp: Any, disc: str) -> list[Any]:
    if get_origin(tp) not in (Union, types.UnionType):
        return []
    return [tag for member in get_args(tp) for tag in _tags(member, disc)]
