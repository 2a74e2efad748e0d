"""Strict, typed configuration from YAML: an unknown key or a wrong type is an error that names
the key and lists the valid ones (papermill and plain YAML loading would accept a typo silently
and run the default)."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import TiesnbError


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise TiesnbError(f"file not found: {path}") from None
    except yaml.YAMLError as e:
        raise TiesnbError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TiesnbError(f"{path} must hold a mapping of parameter names to values")
    return data


def check_type(value: Any, annotation: Any) -> bool:
    """Whether a YAML value fits a type annotation (int fits float; bool never fits int)."""
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(check_type(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(check_type(v, args[0]) for v in value) if args else isinstance(value, list)
    if origin is dict:
        return isinstance(value, dict) and (not args or all(check_type(v, args[1]) for v in value.values()))
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is not None or isinstance(annotation, types.UnionType):
        return str(annotation).replace("typing.", "").replace("NoneType", "None")
    return getattr(annotation, "__name__", str(annotation))


def validate(values: Mapping[str, Any], annotations: Mapping[str, Any], where: str) -> None:
    """Raise on the first unknown key or ill-typed value."""
    for key, value in values.items():
        if key not in annotations:
            raise TiesnbError(f"{where}: unknown parameter '{key}'; valid names: {', '.join(annotations)}")
        if not check_type(value, annotations[key]):
            raise TiesnbError(f"{where}: parameter '{key}' must be {type_name(annotations[key])}, got {value!r}")


def load_dataclass(cls, path: str | Path, **overrides):
    """Build the dataclass ``cls`` from a YAML file, strictly."""
    return dataclass_from(cls, {**read_yaml(path), **overrides}, path)


def dataclass_from(cls, data: Mapping[str, Any], path: str | Path):
    """Build the dataclass ``cls`` from a mapping read from ``path``, strictly."""
    data = dict(data)
    hints = typing.get_type_hints(cls)
    fields = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    validate(data, fields, str(path))
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in data]
    if required:
        raise TiesnbError(f"{path}: missing required parameter(s) {', '.join(required)}")
    return cls(**data)
