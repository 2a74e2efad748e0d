"""The registry: merge method names → implementations, each declaring its typed parameters.

An unknown method or parameter, a wrong type and a value out of range are all rejected here,
before any data is read, with a message listing what is valid.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..errors import TiesnbError


@dataclass(frozen=True)
class Param:
    """One parameter of a merge method.

    ``kind``: ``float``, ``int``, ``bool``, ``choice`` (one of ``choices``), ``weights`` (None or
    one number per model), ``per_model`` (one number, or a list of one per model, each checked),
    ``source`` (None, a state dict or a checkpoint path), ``sources`` (None or one of those per
    model).
    """

    default: Any
    doc: str
    kind: str = "float"
    choices: tuple = ()
    check: Callable[[Any], bool] | None = None
    rule: str = ""

    def validate(self, method: str, name: str, value: Any) -> Any:
        where = f"parameter '{name}' of method '{method}'"
        k = self.kind
        if k == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TiesnbError(f"{where} must be a number, got {value!r}")
            value = float(value)
            if not math.isfinite(value):
                raise TiesnbError(f"{where} must be finite, got {value}")
        elif k == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise TiesnbError(f"{where} must be an integer, got {value!r}")
        elif k == "bool":
            if not isinstance(value, bool):
                raise TiesnbError(f"{where} must be true or false, got {value!r}")
        elif k == "choice":
            if value not in self.choices:
                raise TiesnbError(f"{where} must be one of {', '.join(map(str, self.choices))}; got {value!r}")
        elif k == "weights":
            if value is not None:
                if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                    raise TiesnbError(f"{where} must be a list of numbers, one per model; got {value!r}")
                value = list(value)
                for w in value:
                    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                        raise TiesnbError(f"{where} must hold finite numbers, got {w!r}")
                value = [float(w) for w in value]
        elif k == "per_model":
            if isinstance(value, (list, tuple)):
                if not value:
                    raise TiesnbError(f"{where} must be a number or a list of one number per model; got []")
                value = [self.validate(method, name, v) for v in value]
                return value  # each entry was checked
            return Param(self.default, self.doc, "float", check=self.check, rule=self.rule).validate(method, name, value)
        elif k == "source":
            if value is not None and not isinstance(value, (Mapping, str, os.PathLike)) and not hasattr(value, "read_into"):
                raise TiesnbError(f"{where} must be a state dict or a checkpoint path, got {type(value).__name__}")
        elif k == "sources":
            if value is not None:
                if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
                    raise TiesnbError(f"{where} must be a list with one state dict or path per model")
                value = list(value)
        else:  # pragma: no cover - a programming error
            raise ValueError(k)
        if self.check is not None and value is not None and not self.check(value):
            raise TiesnbError(f"{where} out of range: {value!r} (needs {self.rule})")
        return value


@dataclass
class Method:
    """A registered merge method: a name, typed parameters and the implementation that runs it.
    Variants (``dare_ties``, ``breadcrumbs``, …) are instances of the same implementation with
    some switches fixed."""

    name: str
    doc: str
    params: dict[str, Param]
    impl: Any
    fixed: dict[str, Any] = field(default_factory=dict)
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    # parameters that may take other values for some tensors (``tensor_params``: mergekit's layer
    # gradients and filters, translated to one value per tensor)
    per_tensor: tuple[str, ...] = ()

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Every parameter's value: explicit ones, else the preset's, else the default."""
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            raise TiesnbError(f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                              f"for method '{self.name}'; valid: {', '.join(self.params)}")
        values = {k: p.default for k, p in self.params.items()}
        if "preset" in self.params:
            preset = self.params["preset"].validate(self.name, "preset", given.get("preset", values["preset"]))
            values.update(self.presets[preset])
        values.update(given)
        out = {k: self.params[k].validate(self.name, k, v) for k, v in values.items() if k != "tensor_params"}
        if "tensor_params" in self.params:
            out["tensor_params"] = self._tensor_params(values.get("tensor_params"))
        return {**out, **self.fixed}

    def _tensor_params(self, value: Any) -> dict[str, dict[str, Any]] | None:
        """``{tensor name: {parameter: value}}``, each value checked as the parameter itself."""
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise TiesnbError(f"parameter 'tensor_params' of method '{self.name}' must map tensor names to "
                              f"{{parameter: value}}; got {type(value).__name__}")
        out = {}
        for tensor, over in value.items():
            if not isinstance(over, Mapping):
                raise TiesnbError(f"tensor_params['{tensor}'] of method '{self.name}' must be a mapping, got {over!r}")
            bad = sorted(set(over) - set(self.per_tensor))
            if bad:
                raise TiesnbError(f"tensor_params['{tensor}']: {', '.join(map(repr, bad))} cannot vary by tensor in "
                                  f"method '{self.name}'; these can: {', '.join(self.per_tensor) or 'none'}")
            out[str(tensor)] = {k: self.params[k].validate(self.name, f"{k}' of tensor '{tensor}", v)
                                for k, v in over.items()}
        return out

    def describe(self) -> str:
        lines = [f"{self.name}: {self.doc}"]
        for k, p in self.params.items():
            extra = f" ({' | '.join(map(str, p.choices))})" if p.choices else (f" ({p.rule})" if p.rule else "")
            lines.append(f"  {k} = {p.default!r}{extra}: {p.doc}")
        return "\n".join(lines)


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise TiesnbError(f"unknown merge method {name!r}; valid methods: {', '.join(METHODS)}") from None
