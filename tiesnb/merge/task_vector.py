"""Task vectors as values: τ = θ_t − θ0, with the algebra one expects (+, −, scalar ·, sum())."""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping

import torch

from ..errors import TiesnbError


class TaskVector(Mapping[str, torch.Tensor]):
    """A mapping from parameter name to a float32 delta, closed under ``+``, ``-``, unary ``-``
    and multiplication by a scalar; ``sum(tvs)`` works, and :meth:`apply` adds one to a model.

    >>> tv = TaskVector.between(base, finetuned)   # θ_t − θ0 over the float parameters
    >>> merged = (0.4 * (tv_a + tv_b)).apply(base)   # task arithmetic with λ = 0.4
    """

    def __init__(self, deltas: Mapping[str, torch.Tensor]):
        self._d = {k: v for k, v in deltas.items()}

    @classmethod
    def between(cls, base: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor],
                names: Iterable[str] | None = None) -> "TaskVector":
        """``finetuned − base`` for the given names (default: every floating-point tensor)."""
        if names is None:
            names = [k for k, v in base.items() if v.is_floating_point()]
        names = list(names)
        missing = [k for k in names if k not in finetuned]
        if missing:
            raise TiesnbError(f"the fine-tuned model lacks {len(missing)} parameter(s) of the base, e.g. {missing[0]!r}")
        out = {}
        for k in names:
            if finetuned[k].shape != base[k].shape:
                raise TiesnbError(f"shape mismatch for '{k}': base {tuple(base[k].shape)} vs fine-tuned {tuple(finetuned[k].shape)}")
            out[k] = finetuned[k].detach().float() - base[k].detach().float()
        return cls(out)

    # Mapping protocol
    def __getitem__(self, k: str) -> torch.Tensor:
        return self._d[k]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    # algebra
    def _check(self, other: "TaskVector") -> None:
        if set(self._d) != set(other._d):
            diff = sorted(set(self._d) ^ set(other._d))
            raise TiesnbError(f"task vectors over different parameters, e.g. {diff[0]!r}")

    def __add__(self, other):
        if isinstance(other, (int, float)) and other == 0:  # so that sum() starts from 0
            return self
        if not isinstance(other, TaskVector):
            return NotImplemented
        self._check(other)
        return TaskVector({k: v + other._d[k] for k, v in self._d.items()})

    __radd__ = __add__

    def __neg__(self):
        return TaskVector({k: -v for k, v in self._d.items()})

    def __sub__(self, other):
        if not isinstance(other, TaskVector):
            return NotImplemented
        return self + (-other)

    def __mul__(self, c):
        if isinstance(c, bool) or not isinstance(c, (int, float)):
            return NotImplemented
        return TaskVector({k: v * c for k, v in self._d.items()})

    __rmul__ = __mul__

    def __truediv__(self, c):
        if isinstance(c, bool) or not isinstance(c, (int, float)):
            return NotImplemented
        return TaskVector({k: v / c for k, v in self._d.items()})

    def sign(self) -> "TaskVector":
        return TaskVector({k: v.sign() for k, v in self._d.items()})

    def numel(self) -> int:
        return sum(v.numel() for v in self._d.values())

    def norm(self) -> float:
        return float(torch.sqrt(sum((v.double() ** 2).sum() for v in self._d.values())))

    def flatten(self) -> torch.Tensor:
        """All entries in one vector, names in sorted order (the original code's layout)."""
        return torch.cat([self._d[k].reshape(-1) for k in sorted(self._d)])

    def apply(self, base: Mapping[str, torch.Tensor], lam: float = 1.0) -> dict[str, torch.Tensor]:
        """``base + lam · τ`` as a new state dict in the base's dtypes (other entries copied)."""
        out = {}
        for k, v in base.items():
            out[k] = (v.float() + lam * self._d[k]).to(v.dtype) if k in self._d else v.clone()
        return out

    def __repr__(self) -> str:
        return f"TaskVector({len(self)} tensors, {self.numel()} entries)"
