"""The numba kernels behind :mod:`.fused` (see there for what each does and why). Imported on
first use, so that a merge that needs none of them (fp32 task arithmetic, say) does not pay
numba's start-up (≈ 0.7 s: importing numba, then loading the cached kernels)."""

import numpy as np
from numba import njit, prange

TILE = 1024  # merge: columns a thread works on at a time; (n, TILE) float32 stays in the L1/L2 cache
BF16_TILE = 4096  # histogram of stored numbers: columns loaded at a time


@njit(inline="always")
def _load(r, bits, w):  # pragma: no cover - compiled
    """Stored numbers ``r[:w]`` (the bits of bf16 or float32 numbers) as the bits of the float32
    they equal, into ``bits`` (a bf16 number is the top half of its float32)."""
    shift = np.uint32(16 if r.itemsize == 2 else 0)  # one loop: a branch around two cost 7 %
    for k in range(w):
        bits[k] = np.uint32(r[k]) << shift


@njit(inline="always")
def _nonfinite(bits, w):  # pragma: no cover - compiled
    """Whether one of the float32 numbers ``bits[:w]`` is inf or NaN (exponent all 1s)."""
    e = np.uint32(0)
    for k in range(w):
        e = max(e, bits[k] & np.uint32(0x7F800000))
    return e == np.uint32(0x7F800000)


@njit(inline="always")
def _load_base(raw, t0, w, bits, fb):  # pragma: no cover - compiled
    """The base's (row 0's) stored numbers over columns ``t0 … t0 + w`` as float32 into ``fb``."""
    _load(raw[0][t0:t0 + w], bits, w)
    f = bits.view(np.float32)
    for k in range(w):
        fb[k] = f[k]


@njit(inline="always")
def _load_delta(raw, i, t0, w, bits, fb):  # pragma: no cover - compiled
    """Model ``i``'s task vector over columns ``t0 … t0 + w`` (its row i + 1 minus the base ``fb``,
    in float32) as float32 bits into ``bits``."""
    _load(raw[i + 1][t0:t0 + w], bits, w)
    f = bits.view(np.float32)
    for k in range(w):
        f[k] = f[k] - fb[k]


@njit(inline="always")
def _load_task_vector(raw, i, t0, w, bits, fb):  # pragma: no cover - compiled
    """Model ``i``'s task vector over columns ``t0 … t0 + w`` as float32 bits into ``bits`` (the
    base loaded into ``fb`` first): one model's tile, for kernels that work a model at a time."""
    _load_base(raw, t0, w, bits, fb)
    _load_delta(raw, i, t0, w, bits, fb)


@njit(inline="always")
def _tile_buffers(n):  # pragma: no cover - compiled
    """A thread's work buffers for :func:`_merge_tile`: trimmed rows, sign, sum, count, flags."""
    return (np.empty((n, TILE), np.float32), np.empty(TILE, np.float32), np.empty(TILE, np.float32),
            np.empty(TILE, np.float32), np.empty(TILE, np.uint8))


@njit(cache=True, nogil=True, parallel=True)
def _histogram(bits, hist, blocks, low_bits, times):  # pragma: no cover - compiled
    n, C = bits.shape
    for b in prange(blocks):
        lo, hi = b * C // blocks, (b + 1) * C // blocks
        for i in range(n):
            h = hist[b, i]
            row = bits[i, lo:hi]  # a slice indexed from 0: no negative-index checks in the loop
            for j in range(hi - lo):
                x = row[j] & 0x7FFFFFFF  # |x|: the sign bit cleared
                key = x >> 16
                if low_bits and (x & 0xFFFF) != 0:
                    key |= 0x8000
                h[key] += times


@njit(cache=True, nogil=True, parallel=True)
def _histogram_stored(raw, hist, low_bits, times):  # pragma: no cover - compiled
    n, C = len(raw) - 1, raw[0].shape[0]
    blocks = hist.shape[0]
    for b in prange(blocks):
        lo, hi = b * C // blocks, (b + 1) * C // blocks
        bits = np.empty(BF16_TILE, np.uint32)
        fb = np.empty(BF16_TILE, np.float32)
        for t0 in range(lo, hi, BF16_TILE):
            w = min(BF16_TILE, hi - t0)
            _load_base(raw, t0, w, bits, fb)
            for i in range(n):
                _load_delta(raw, i, t0, w, bits, fb)
                h = hist[b, i]
                for k in range(w):
                    x = bits[k] & np.uint32(0x7FFFFFFF)
                    key = x >> np.uint32(16)
                    if low_bits and (x & np.uint32(0xFFFF)) != 0:
                        key |= np.uint32(0x8000)
                    h[key] += times


@njit(cache=True, nogil=True, parallel=True)
def _histogram_window(raw, hist, times, first, fine):  # pragma: no cover - compiled
    """:func:`_histogram_stored` without low-bits keys, also counting the low 16 bits of model
    i's entries in bins ``first[i] … first[i] + W - 1`` into ``fine[b, i]`` (W, 65,536), in the
    same loop (a second loop over the tile doubled the kernel's time; this adds ~20 %; a kernel of
    its own, as a branch in the other slowed it by 10 %)."""
    n, C = len(raw) - 1, raw[0].shape[0]
    blocks = hist.shape[0]
    W = np.uint32(fine.shape[2])
    for b in prange(blocks):
        lo, hi = b * C // blocks, (b + 1) * C // blocks
        bits = np.empty(BF16_TILE, np.uint32)
        fb = np.empty(BF16_TILE, np.float32)
        for t0 in range(lo, hi, BF16_TILE):
            w = min(BF16_TILE, hi - t0)
            _load_base(raw, t0, w, bits, fb)
            for i in range(n):
                _load_delta(raw, i, t0, w, bits, fb)
                h = hist[b, i]
                fi = fine[b, i].reshape(-1)
                start = np.uint32(first[i])
                for k in range(w):
                    x = bits[k] & np.uint32(0x7FFFFFFF)
                    key = x >> np.uint32(16)
                    t = key - start  # below `start`: wraps to a large number
                    if t < W:
                        fi[(t << np.uint32(16)) | (x & np.uint32(0xFFFF))] += times
                    h[key] += times


@njit(cache=True, nogil=True, parallel=True)
def _delta_stored(raw, base, D, at, bad):  # pragma: no cover - compiled
    n, C = len(raw) - 1, raw[0].shape[0]
    blocks = bad.shape[0]
    for b in prange(blocks):
        lo, hi = b * C // blocks, (b + 1) * C // blocks
        w = hi - lo
        bits = np.empty(w, np.uint32)
        f = bits.view(np.float32)
        fb = base[at + lo:at + hi]  # slices, indexed from 0: the loops then vectorize
        _load(raw[0][lo:hi], bits, w)
        nonfinite = _nonfinite(bits, w)
        for k in range(w):
            fb[k] = f[k]
        for i in range(n):
            _load(raw[i + 1][lo:hi], bits, w)
            nonfinite |= _nonfinite(bits, w)
            Di = D[i, at + lo:at + hi]
            for k in range(w):
                Di[k] = f[k] - fb[k]
        bad[b] = nonfinite


@njit(cache=True, nogil=True)
def _merge_tile(D, t0, w, bt, thr, tie, rem, low, zero_positive, disjoint, lam, T, S, num, cnt, fl, o, fo):  # pragma: no cover
    """TIES on the ``w`` columns of task vectors ``D`` (n, ·) from ``t0``, base ``bt``; merged
    values to ``o``, set-aside flags to ``fo``; ``rem``: the ties each model may still keep."""
    n = D.shape[0]
    nf = np.float32(n)
    one = np.float32(1.0)
    zero = np.float32(0.0)
    S[:w] = zero
    fl[:w] = 0
    for i in range(n):  # trim row i, then add it: the sum runs over the models in order
        row = D[i, t0:t0 + w]  # a row slice of a C-contiguous array: contiguous, the loops vectorize
        Ti = T[i]
        th = thr[i]
        tv = tie[i]
        if rem[i] >= w:  # every tie of the tile is kept: one branch-free loop
            c = 0
            for j in range(w):
                x = row[j]
                a = abs(x)
                Ti[j] = x if (a > th) | (a == tv) else zero
                c += a == tv
            rem[i] -= c
        elif rem[i] > 0:  # the last ties to keep may fall in this tile: kept in flat order
            c = 0
            for j in range(w):
                x = row[j]
                a = abs(x)
                Ti[j] = x if a > th else zero
                c += a == tv
            if c:  # (a tie is never above the threshold: tv == th where ties are kept)
                r = rem[i]
                for j in range(w):
                    if r > 0 and abs(row[j]) == tv:
                        Ti[j] = row[j]
                        r -= 1
                rem[i] = r
        else:
            for j in range(w):
                x = row[j]
                Ti[j] = x if abs(x) > th else zero
        if low[i] >= 0:  # not kept, though in the undecided bin (low > 0, so x != 0)
            lw = low[i]
            for j in range(w):
                fl[j] |= (Ti[j] == zero) & (abs(row[j]) >= lw)
        for j in range(w):
            S[j] += Ti[j]
    for j in range(w):  # the elected sign, kept in S
        v = S[j]
        sg = one if v > zero else (-one if v < zero else zero)
        if zero_positive and sg == zero:
            sg = one
        S[j] = sg
        num[j] = zero
        cnt[j] = zero
    for i in range(n):  # the agreeing entries' magnitudes, summed in model order
        Ti = T[i]
        for j in range(w):
            r = Ti[j] * S[j]
            num[j] += r if r > zero else zero
            cnt[j] += one if r > zero else zero
    for j in range(w):
        m = num[j] * S[j]
        if disjoint == 0:
            m = m / (cnt[j] if cnt[j] > one else one)
        elif disjoint == 2:
            m = m / nf
        o[j] = bt[j] + lam * m
        fo[j] = fl[j]


@njit(cache=True, nogil=True, parallel=True)
def _merge(D, base, thr, tie, left, low, zero_positive, disjoint, lam, out, flags, used, blocks):  # pragma: no cover
    n, C = D.shape
    # the deterministic tie rule keeps the first `left[i]` entries equal to `tie[i]` in flat
    # order: when the chunk could exhaust them, count each block's ties first, so every block
    # knows how many the earlier blocks took
    start = np.zeros((blocks, n), np.int64)
    counts = np.zeros((blocks, n), np.int64)
    for b in prange(blocks - 1):
        lo, hi = b * C // blocks, (b + 1) * C // blocks
        for i in range(n):
            if 0 < left[i] < C:
                c = 0
                tv = tie[i]
                row = D[i, lo:hi]
                for j in range(hi - lo):
                    c += abs(row[j]) == tv
                counts[b, i] = c
    for i in range(n):
        rem = left[i]
        for b in range(blocks):
            start[b, i] = rem
            rem = max(rem - counts[b, i], 0)
    rest = start.copy()
    for b in prange(blocks):
        lo, hi = b * C // blocks, (b + 1) * C // blocks
        T, S, num, cnt, fl = _tile_buffers(n)
        for t0 in range(lo, hi, TILE):
            w = min(TILE, hi - t0)
            _merge_tile(D, t0, w, base[t0:t0 + w], thr, tie, rest[b], low, zero_positive, disjoint,
                        lam, T, S, num, cnt, fl, out[t0:t0 + w], flags[t0:t0 + w])
    for i in range(n):
        for b in range(blocks):
            used[i] += start[b, i] - rest[b, i]


@njit(inline="always")
def _load_tile(raw, t0, w, bits, bt, Dt):  # pragma: no cover - compiled
    """Columns ``t0 … t0 + w`` of a chunk as stored: the base (row 0) as float32 into ``bt``, the
    task vectors (rows 1… minus it) into ``Dt[:, :w]``."""
    f = bits.view(np.float32)
    _load(raw[0][t0:t0 + w], bits, w)
    for k in range(w):
        bt[k] = f[k]
    for i in range(len(raw) - 1):
        _load(raw[i + 1][t0:t0 + w], bits, w)
        di = Dt[i]
        for k in range(w):
            di[k] = f[k] - bt[k]


@njit(cache=True, nogil=True, parallel=True)
def _merge_stored(raw, thr, tie, left, upto, low, zero_positive, disjoint, lam, out, flags, used, blocks):  # pragma: no cover
    """:func:`_merge` of a chunk as stored. Model i's ties: with ``upto[i] >= 0`` known by place —
    it keeps those before column ``upto[i]`` (a whole tensor, :func:`_tensor_cuts_stored`), each
    tile told how many it keeps (only the tile holding ``upto[i]`` counts them); else every block
    may keep ``left[i]`` and ``used`` says how many they took (the caller checks the sum)."""
    n, C = len(raw) - 1, raw[0].shape[0]
    rest = np.empty((blocks, n), np.int64)
    for b in prange(blocks):
        lo, hi = b * C // blocks, (b + 1) * C // blocks
        rest[b] = left
        Dt = np.empty((n, TILE), np.float32)
        bt = np.empty(TILE, np.float32)
        bits = np.empty(TILE, np.uint32)
        T, S, num, cnt, fl = _tile_buffers(n)
        for t0 in range(lo, hi, TILE):
            w = min(TILE, hi - t0)
            _load_tile(raw, t0, w, bits, bt, Dt)
            for i in range(n):
                u = upto[i]
                if u < 0:
                    continue
                if u >= t0 + w:
                    rest[b, i] = w  # every tie of the tile
                elif u <= t0:
                    rest[b, i] = 0
                else:
                    c = 0
                    row = Dt[i]
                    for j in range(u - t0):
                        c += abs(row[j]) == tie[i]
                    rest[b, i] = c
            _merge_tile(Dt, 0, w, bt, thr, tie, rest[b], low, zero_positive, disjoint,
                        lam, T, S, num, cnt, fl, out[t0:t0 + w], flags[t0:t0 + w])
    for i in range(n):
        if upto[i] < 0:
            for b in range(blocks):
                used[i] += left[i] - rest[b, i]


@njit(inline="always")
def _linear_add(o, f, bt, wi, first, mode, m):  # pragma: no cover - compiled
    """Model ``i``'s term of :func:`linear` over one tile, ``f[:m]`` its float32 weights, into
    ``o`` (``first``: i = 0, which sets ``o``): task arithmetic ``w_i (x_i − b)``, average ``w_i x_i``;
    the terms summed in model order, as the torch path does."""
    if mode == 0 and first:
        for k in range(m):
            o[k] = (f[k] - bt[k]) * wi
    elif mode == 0:
        for k in range(m):
            o[k] += (f[k] - bt[k]) * wi
    elif first:
        for k in range(m):
            o[k] = f[k] * wi
    else:
        for k in range(m):
            o[k] += f[k] * wi


@njit(inline="always")
def _linear_finish(o, bt, lam, mode, inv, m):  # pragma: no cover - compiled
    """The tile's sum of terms to the merged values: ``b + λ·sum`` (task arithmetic), ``sum / W``."""
    if mode == 0:
        for k in range(m):
            o[k] = bt[k] + lam * o[k]
    else:
        for k in range(m):
            o[k] = o[k] / inv


@njit(inline="always")
def _exponent_max(x, m):  # pragma: no cover - compiled
    """The largest exponent field of float32 numbers ``x[:m]`` (0x7F800000: an inf or NaN)."""
    bits = x[:m].view(np.uint32)
    e = np.uint32(0)
    for k in range(m):
        e = max(e, bits[k] & np.uint32(0x7F800000))
    return e


@njit(cache=True, nogil=True, parallel=True)
def _linear(X, w, lam, mode, inv, out, bad, blocks):  # pragma: no cover - compiled
    C = X.shape[1]
    for b in prange(blocks):
        lo, hi = b * C // blocks, (b + 1) * C // blocks
        e = np.uint32(0)
        for t0 in range(lo, hi, TILE):
            m = min(TILE, hi - t0)
            o, bt = out[t0:t0 + m], X[0, t0:t0 + m]  # row slices of a C-contiguous array: loops vectorize
            for i in range(X.shape[0] - 1):
                _linear_add(o, X[i + 1, t0:t0 + m], bt, w[i], i == 0, mode, m)
            _linear_finish(o, bt, lam, mode, inv, m)
            e = max(e, _exponent_max(o, m))
            if mode == 1:  # the base is not in an average: check it too
                e = max(e, _exponent_max(X[0, t0:t0 + m], m))
        bad[b] = e == np.uint32(0x7F800000)


@njit(cache=True, nogil=True, parallel=True)
def _linear_stored(raw, w, lam, mode, inv, out, bad, blocks):  # pragma: no cover - compiled
    # per model one load and one multiply-add over the tile (not a widened copy of every row first,
    # and no check of every input: a non-finite input makes the output non-finite, see
    # fused.linear; 0.26 → 0.15 ns a stored number over 512 MB, 2 threads)
    n, C = len(raw) - 1, raw[0].shape[0]
    for b in prange(blocks):
        lo, hi = b * C // blocks, (b + 1) * C // blocks
        bt = np.empty(TILE, np.float32)
        bits = np.empty(TILE, np.uint32)
        f = bits.view(np.float32)
        e = np.uint32(0)
        for t0 in range(lo, hi, TILE):
            m = min(TILE, hi - t0)
            o = out[t0:t0 + m]
            _load(raw[0][t0:t0 + m], bits, m)
            if mode == 1:  # the base is not in an average: check it
                e = max(e, _exponent_max(f, m))
            for k in range(m):
                bt[k] = f[k]
            for i in range(n):
                _load(raw[i + 1][t0:t0 + m], bits, m)
                _linear_add(o, f, bt, w[i], i == 0, mode, m)
            _linear_finish(o, bt, lam, mode, inv, m)
            e = max(e, _exponent_max(o, m))
        bad[b] = e == np.uint32(0x7F800000)


SORT_BELOW = 2048  # tensor cuts: rows this short are sorted (clearing the histograms costs more)
M31, S16, L16 = np.uint32(0x7FFFFFFF), np.uint32(16), np.uint32(0xFFFF)  # |x|'s bits, the halves


@njit(inline="always")
def _count_low_bits(x, w, h):  # pragma: no cover - compiled
    """Pass 1 of a bf16 tensor cut over the float32 bits ``x[:w]``: key = top 16 bits of ``|x|``,
    + 32,768 where its low 16 bits are not 0; into two interleaved histograms ``h`` (2, 65,536), so
    that a run of increments of one counter does not stall the loop."""
    w2 = w - w % 2
    for j in range(0, w2, 2):
        for u in range(2):
            a = x[j + u] & M31
            h[u, (a >> S16) | (np.uint32((a & L16) != 0) << np.uint32(15))] += 1
    if w2 < w:
        a = x[w2] & M31
        h[0, (a >> S16) | (np.uint32((a & L16) != 0) << np.uint32(15))] += 1


@njit(inline="always")
def _count_top(x, w, h1):  # pragma: no cover - compiled
    """Pass 1 of a float32 tensor cut: the top 16 bits of ``|x|``, ``x[:w]``, into ``h1`` (32,768)."""
    for j in range(w):
        h1[(x[j] & M31) >> S16] += 1


@njit(inline="always")
def _count_fine(x, w, ub, h2):  # pragma: no cover - compiled
    """Pass 2: the low 16 bits of the entries of ``x[:w]`` in bin ``ub`` into ``h2`` (65,536)."""
    for j in range(w):
        a = x[j] & M31
        if (a >> S16) == ub:
            h2[a & L16] += 1


@njit(inline="always")
def _pick_low_bits(h, k):  # pragma: no cover - compiled
    """From pass 1's low-bits histograms: (the bin holding the ``k``-th largest, how many lie above
    it, whether the cut is that bin's floor — then the number on it)."""
    above = 0
    b = 32767
    while True:  # per bin, from the top: those above its floor, then those on it
        inside = h[0, b | 0x8000] + h[1, b | 0x8000]
        if above + inside >= k:
            return b, above, False, 0  # the cut is above the floor: pass 2
        above += inside
        on = h[0, b] + h[1, b]
        if above + on >= k:
            return b, above, True, on
        above += on
        b -= 1


@njit(inline="always")
def _pick_top(h1, k):  # pragma: no cover - compiled
    """The bin of pass 1 holding the ``k``-th largest, and how many lie above it."""
    above = 0
    b = 32767
    while above + h1[b] < k:
        above += h1[b]
        b -= 1
    return b, above


@njit(inline="always")
def _pick_fine(h2, b, above, k):  # pragma: no cover - compiled
    """From pass 2 over bin ``b``: the ``k``-th largest's bits, how many are larger, how many equal."""
    v = 65535
    while above + h2[v] < k:
        above += h2[v]
        v -= 1
    return (b << 16) | v, above, h2[v]


@njit(inline="always")
def _sorted_cut(x, C, k):  # pragma: no cover - compiled
    """The cut of a short row ``x[:C]`` by sorting: its magnitudes' bits sort as the magnitudes do."""
    s = np.sort(x[:C] & M31)
    v = s[C - k]
    g = 0
    e = 0
    for j in range(C):
        g += s[j] > v
        e += s[j] == v
    return v, g, e


@njit(cache=True, nogil=True, parallel=True)
def _tensor_cuts(bits, K, value, greater, equal, low_bits):  # pragma: no cover - compiled
    """Per row of ``bits`` (float32 bit patterns, one model's task vector of one tensor): the bit
    pattern of its ``K[i]``-th largest magnitude, how many magnitudes are larger and how many
    equal it — a two-pass radix select (top 16 bits, then the low 16 within the bin), exact.

    ``low_bits`` (bf16 checkpoints): pass 1 also counts apart, per bin, the magnitudes whose low 16
    bits are not 0 — those above the bin's floor. The task vectors of bf16 checkpoints take few
    distinct magnitudes, nearly all with low bits 0 (99.4 % in the benchmark's): the cut is then
    the floor of its bin, found by pass 1 alone (7 × 0.26 M entries: 1.8 → 1.3 ms with two
    interleaved histograms). Pass 2, where needed, counts the low 16 bits within the bin. Rows of
    fewer than ``SORT_BELOW`` entries are sorted instead (the norm vectors of an LLM: 0.5 →
    0.02 ms). Counts are int32: a held tensor has far fewer than 2³¹ entries."""
    n, C = bits.shape
    for i in prange(n):
        k = K[i]
        if k <= 0 or k > C:
            continue
        row = bits[i]
        if C < SORT_BELOW:
            value[i], greater[i], equal[i] = _sorted_cut(row, C, k)
            continue
        if low_bits:
            h = np.zeros((2, 65536), np.int32)
            _count_low_bits(row, C, h)
            b, above, found, on = _pick_low_bits(h, k)
            if found:
                value[i], greater[i], equal[i] = b << 16, above, on
                continue
        else:
            h1 = np.zeros(32768, np.int32)
            _count_top(row, C, h1)
            b, above = _pick_top(h1, k)
        h2 = np.zeros(65536, np.int32)
        _count_fine(row, C, np.uint32(b), h2)
        value[i], greater[i], equal[i] = _pick_fine(h2, b, above, k)


@njit(cache=True, nogil=True, parallel=True)
def _tensor_cuts_stored(raw, K, value, greater, equal, upto, bad, low_bits):  # pragma: no cover - compiled
    """:func:`_tensor_cuts` of the task vectors of one whole tensor as stored (``raw``: n + 1 rows,
    the base first), formed a tile at a time and never written out; and ``upto[i]``, the column
    after the last tie that the flat-order tie rule keeps (the ``K[i] - greater[i]``-th entry equal
    to the cut), so that the merge needs no count of ties. ``bad[i]``: model i's task vector has
    an inf or NaN (a non-finite input, or an overflow): nothing else is then set for it."""
    n, C = len(raw) - 1, raw[0].shape[0]
    for i in prange(n):
        k = K[i]
        if k <= 0 or k > C:
            continue
        bits = np.empty(BF16_TILE, np.uint32)
        fb = np.empty(BF16_TILE, np.float32)
        if C < SORT_BELOW:
            _load_task_vector(raw, i, 0, C, bits, fb)
            if _nonfinite(bits, C):
                bad[i] = True
                continue
            v, g, e = _sorted_cut(bits, C, k)
        else:
            found = False
            if low_bits:
                h = np.zeros((2, 65536), np.int32)
                for t0 in range(0, C, BF16_TILE):
                    w = min(BF16_TILE, C - t0)
                    _load_task_vector(raw, i, t0, w, bits, fb)
                    _count_low_bits(bits, w, h)
                if h[:, 0x7F80:0x8000].sum() + h[:, 0xFF80:].sum():  # exponent 255: inf or NaN
                    bad[i] = True
                    continue
                b, g, found, e = _pick_low_bits(h, k)
                v = np.uint32(b) << S16
            else:
                h1 = np.zeros(32768, np.int32)
                for t0 in range(0, C, BF16_TILE):
                    w = min(BF16_TILE, C - t0)
                    _load_task_vector(raw, i, t0, w, bits, fb)
                    _count_top(bits, w, h1)
                if h1[0x7F80:].sum():
                    bad[i] = True
                    continue
                b, g = _pick_top(h1, k)
            if not found:
                h2 = np.zeros(65536, np.int32)
                for t0 in range(0, C, BF16_TILE):
                    w = min(BF16_TILE, C - t0)
                    _load_task_vector(raw, i, t0, w, bits, fb)
                    _count_fine(bits, w, np.uint32(b), h2)
                v, g, e = _pick_fine(h2, b, g, k)
        value[i], greater[i], equal[i] = v, g, e
        take = k - g  # the ties kept: the first `take` in flat order
        upto[i] = C
        if take < e:
            c = 0
            for t0 in range(0, C, BF16_TILE):
                w = min(BF16_TILE, C - t0)
                _load_task_vector(raw, i, t0, w, bits, fb)
                t = 0
                for j in range(w):  # the tile's ties counted first: a loop that vectorizes
                    t += (bits[j] & M31) == v
                if c + t < take:
                    c += t
                    continue
                for j in range(w):
                    c += (bits[j] & M31) == v
                    if c == take:
                        upto[i] = t0 + j + 1
                        break
                break


@njit(inline="always")
def _mix32(x):  # pragma: no cover - compiled
    """kernels._mix32 on one uint64 holding [0, 2³²): the same products, the same bits."""
    m = np.uint64(0xFFFFFFFF)
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x7FEB352D)) & m
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(0x2C1B3C6D)) & m
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x297A2D39)) & m
    return x ^ (x >> np.uint64(15))


@njit(cache=True, nogil=True, parallel=True)
def _keep_random(klo, khi, start, threshold, out):  # pragma: no cover - compiled
    m = np.uint64(0xFFFFFFFF)
    for j in prange(out.shape[0]):
        pos = np.uint64(start + j)
        h = _mix32((pos & m) ^ klo)
        h = _mix32(h ^ (pos >> np.uint64(32)) ^ khi)
        out[j] = h < threshold
