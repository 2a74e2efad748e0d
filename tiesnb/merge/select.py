"""Exact top-K selection by magnitude, in bounded memory, over a stream of chunks.

TIES keeps the ``k`` fraction of entries of largest magnitude in each task vector — over the
whole model in the paper ("global"), which the original code does by concatenating the model
into one vector and calling ``kthvalue`` on it (≈ 6-9 copies of n·d floats). Here the K-th
largest magnitude is found exactly by a radix select on the float32 bit patterns, which for
non-negative floats order like the values:

1. pass 1 counts the top 16 bits of every ``|x|`` (32 768 bins) and finds the bin holding the
   K-th largest;
2. pass 2 counts the low 16 bits of the entries in that bin (65 536 bins) and finds the value.

Memory is two histograms per model whatever the model size; each pass reads the data once.
Where the bin can be guessed beforehand (from a sample), pass 1 also counts the low bits of a few
bins around the guess (:meth:`TopK.add_window`): guessed right, pass 2 is not needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

HI_BINS = 1 << 15  # top 16 bits of a non-negative float32 (the sign bit is 0)
LO_BINS = 1 << 16


def float_of_bits(bits: int) -> float:
    return float(torch.tensor(bits, dtype=torch.int32).view(torch.float32))


@dataclass(frozen=True)
class Cut:
    """Which entries of one task vector a top-K trim keeps: those with ``|x| > value``, or
    ``|x| >= value`` when ``inclusive``; plus, when not inclusive, the first ``extra`` entries
    with ``|x| == value`` in flat order (the deterministic tie rule). ``kept`` counts them all."""

    value: float
    inclusive: bool
    extra: int = 0
    kept: int = 0
    equal: int = 0  # entries with |x| == value (when not inclusive): the ties ``extra`` is taken from

    @staticmethod
    def everything(total: int) -> "Cut":
        return Cut(0.0, True, 0, total)

    @staticmethod
    def nothing() -> "Cut":
        return Cut(float("inf"), False, 0, 0)


def top_count(k: float, d: int, rule: str) -> int:
    """How many of ``d`` entries a fraction ``k`` keeps.

    ``floor``: ``int(k·d)`` (peft, and the paper's "top-k%").
    ``at_least_one``: ``max(1, int(k·d))`` for a non-empty tensor (mergekit's magnitude sparsify).
    ``original``: ``int(k·d) + 1``, what the original code's ``kthvalue(d − int(d·k))`` keeps when
    values are distinct (it fails at k = 1; here that keeps everything).
    """
    K = int(k * d)  # the same expression as every implementation, float rounding included
    if rule == "original":
        K += 1
    elif rule == "at_least_one":
        K = max(1, K) if d > 0 and k > 0 else K
    elif rule != "floor":
        raise ValueError(rule)
    return min(max(K, 0), d)


def bin_of_rank(hist: np.ndarray, K: int) -> tuple[int, int]:
    """The bin holding the K-th largest entry (1-based) of a histogram ordered by value, and how
    many entries lie in higher bins."""
    below = np.cumsum(hist)  # entries in bins <= b
    total = int(below[-1])
    # highest b with (entries in bins >= b) >= K, i.e. below[b - 1] <= total - K
    b = int(np.searchsorted(below, total - K, side="right"))
    return b, total - int(below[b])


class TopK:
    """Finds the cut keeping the ``K`` largest magnitudes of a stream of float32 chunks.

    Feed every chunk of absolute values with :meth:`add` (pass 1), call :meth:`advance`; if it
    returns True feed the same stream again (pass 2) and call it once more; then :meth:`cut`.
    ``ties``: ``keep`` keeps every entry equal to the K-th largest (the original code's ``>=``),
    ``index`` keeps exactly K, breaking ties by flat position.
    """

    def __init__(self, K: int, ties: str = "index", device=None, low_bits: bool = False):
        if ties not in ("index", "keep"):
            raise ValueError(ties)
        self.K, self.ties = K, ties
        self.total = 0
        self.stage = 1
        self.hist = torch.zeros(HI_BINS, dtype=torch.int64, device=device)
        # with low_bits, pass 1 also counts per bin the entries whose low 16 bits are not all 0 (the
        # ones above the bin's floor): for bf16 checkpoints, whose deltas are mostly bf16 numbers,
        # the bin holding the cut is then mostly one value, and the cut is exact after one pass
        self.nonzero_low = torch.zeros(HI_BINS, dtype=torch.int64, device=device) if low_bits else None
        self.bin = -1
        self._cut: Cut | None = None
        self.window: tuple[int, np.ndarray] | None = None  # see add_window

    def add(self, a: torch.Tensor, times: int = 1) -> None:
        bits = a.reshape(-1).view(torch.int32)
        if self.stage == 1:
            hi = bits >> 16
            self.total += bits.numel() * times
            if self.nonzero_low is None:
                h = torch.bincount(hi, minlength=HI_BINS)
                self.hist += h if times == 1 else h * times
                return
            # one histogram of 2 × 32,768 keys: the bin, plus 32,768 when the low bits are not 0
            # (bit 15 of the key: a non-negative float's top 16 bits are below 2¹⁵)
            hi.bitwise_or_((bits & 0xFFFF).ne_(0).bitwise_left_shift_(15))
            h = torch.bincount(hi, minlength=2 * HI_BINS)
            self._add_keys(h if times == 1 else h * times)
        elif self.stage == 2:
            low = bits[(bits >> 16) == self.bin] & 0xFFFF
            if low.numel():
                h = torch.bincount(low, minlength=LO_BINS)
                self.hist2 += h if times == 1 else h * times

    def _add_keys(self, h: torch.Tensor) -> None:
        if self.nonzero_low is None:
            self.hist += h
            return
        odd = h[HI_BINS:]
        self.hist += h[:HI_BINS] + odd
        self.nonzero_low += odd

    def keys(self) -> int:
        """Size of pass 1's key histogram: 32,768 bins, twice that with ``low_bits``."""
        return HI_BINS if self.nonzero_low is None else 2 * HI_BINS

    def add_counts(self, h: torch.Tensor, total: int) -> None:
        """Pass 1 from counts made elsewhere (:func:`.fused.histogram`): ``h`` holds :meth:`keys`
        counts of the keys :meth:`add` would have counted over ``total`` entries."""
        if self.stage != 1:
            raise RuntimeError("TopK.add_counts() after pass 1")
        self.total += total
        self._add_keys(h.to(self.hist.device))

    def add_window(self, first: int, counts: np.ndarray) -> None:
        """Pass 2's counts made during pass 1 for a guess of the bin holding the cut: ``counts``
        (W, 65,536), the low 16 bits of every entry in bins ``first … first + W − 1``. When the
        bin turns out to be one of them, :meth:`advance` finds the cut without pass 2."""
        self.window = (first, counts)

    def advance(self) -> bool:
        """Close a pass; True when another pass over the same data is needed."""
        if self.stage == 1:
            K, total = self.K, self.total
            if K <= 0:
                self._cut = Cut.nothing()
            elif K >= total:
                self._cut = Cut.everything(total)
            else:
                hist = self.hist.cpu().numpy()
                b, self.greater = bin_of_rank(hist, K)
                self.bin = b
                if self.greater + int(hist[b]) == K:  # the whole bin is kept: its floor is the cut
                    self._cut = Cut(float_of_bits(b << 16), True, 0, K)
                elif self.nonzero_low is not None and K - self.greater > int(self.nonzero_low[b]):
                    # the entries of the bin above its floor (low bits not 0) are fewer than the bin
                    # must give: all of them are kept, and the cut is the floor value itself, exactly
                    odd = int(self.nonzero_low[b])
                    self._cut = self._cut_at(float_of_bits(b << 16), self.greater + odd, int(hist[b]) - odd)
                elif self.window is not None and 0 <= b - self.window[0] < len(self.window[1]):
                    self._cut_in_bin(self.window[1][b - self.window[0]])  # guessed right: no pass 2
                else:
                    self.hist2 = torch.zeros(LO_BINS, dtype=torch.int64, device=self.hist.device)
                    self.stage = 2
                    return True
            self.stage = 3
            return False
        if self.stage == 2:
            self._cut_in_bin(self.hist2.cpu().numpy())
            self.stage = 3
            return False
        return False

    def _cut_in_bin(self, hist2: np.ndarray) -> None:
        """The cut from the counts of the low 16 bits of the entries in the bin holding it."""
        v, greater_in_bin = bin_of_rank(hist2, self.K - self.greater)
        self._cut = self._cut_at(float_of_bits((self.bin << 16) | v), self.greater + greater_in_bin, int(hist2[v]))

    def _cut_at(self, value: float, greater: int, equal: int) -> Cut:
        """The cut at ``value``, with ``greater`` entries above it and ``equal`` entries at it."""
        return cut_of_rank(self.K, self.total, value, greater, equal, self.ties)

    def cut(self) -> Cut:
        if self._cut is None:
            raise RuntimeError("TopK.cut() before its passes were complete")
        return self._cut


def cut_of_rank(K: int, total: int, value: float, greater: int, equal: int, ties: str = "index") -> Cut:
    """The cut keeping the ``K`` largest of ``total`` magnitudes, given the K-th largest ``value``
    and how many are larger (``greater``) and equal (``equal``): what :class:`TopK` gives."""
    if K <= 0:
        return Cut.nothing()
    if K >= total:
        return Cut.everything(total)
    take = K - greater  # 1 <= take <= equal
    if ties == "keep" or take == equal:
        return Cut(value, True, 0, greater + equal)
    return Cut(value, False, take, K, equal)


def cut_of_tensor(a: torch.Tensor, K: int, ties: str = "index") -> Cut:
    """The cut for one in-memory tensor of magnitudes (two passes over it, no sort)."""
    sel = TopK(K, ties, device=a.device)
    sel.add(a)
    if sel.advance():
        sel.add(a)
        sel.advance()
    return sel.cut()
