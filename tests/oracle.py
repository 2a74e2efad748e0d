"""A second, deliberately plain implementation of the TIES family for the tests to compare with.

It shares nothing with ``tiesnb.merge`` but the definitions: selection by a stable sort (not a
radix select), selection masks with ``torch.where`` (not the ``clamp_min(D·s)`` trick), whole
tensors (not chunks). Results agree with the engine up to float summation order.
"""

import torch


def keep_mask(values: torch.Tensor, k: float, count: str, ties: str) -> torch.Tensor:
    """Boolean mask of the entries a top-k trim keeps, on a 1-D tensor."""
    d = values.numel()
    K = int(k * d) + (1 if count == "original" else 0)
    if count == "at_least_one" and d > 0 and k > 0:  # k = 0 keeps nothing (mergekit's density 0)
        K = max(1, K)
    K = min(K, d)
    mag = values.abs()
    if K == 0:
        return torch.zeros(d, dtype=torch.bool)
    order = torch.sort(-mag, stable=True).indices  # largest first, ties by position
    if ties == "index":
        mask = torch.zeros(d, dtype=torch.bool)
        mask[order[:K]] = True
        return mask
    return mag >= mag[order[K - 1]]  # every entry tied with the K-th largest


def ties_oracle(base, models, *, k=0.2, trim="global", count="floor", ties="index", elect="mass",
                zero_sign="zero", disjoint="mean", lam=1.0, weights=None, weighted_election=False,
                signs=None):
    names = sorted(n for n, v in base.items() if v.is_floating_point())
    sizes = [base[n].numel() for n in names]
    tv = torch.stack([torch.cat([(m[n].float() - base[n].float()).reshape(-1) for n in names]) for m in models])
    # trim
    masks = []
    for row in tv:
        if trim == "global":
            masks.append(keep_mask(row, k, count, ties))
        else:
            masks.append(torch.cat([keep_mask(p, k, count, ties) for p in torch.split(row, sizes)]))
    T = tv * torch.stack(masks)
    w = torch.ones(len(models)) if weights is None else torch.tensor(weights, dtype=torch.float32)
    if weighted_election:
        T = T * w[:, None]
    # elect
    if signs is not None:
        s = torch.cat([signs[n].float().reshape(-1) for n in names]).sign()
    elif elect == "mass":
        s = T.sum(0).sign()
    elif elect == "count":
        s = T.sign().sum(0).sign()
    else:
        raise NotImplementedError(elect)
    if zero_sign == "positive":
        s = torch.where(s == 0, torch.ones_like(s), s)
    elif zero_sign == "majority":
        s = torch.where(s == 0, s.sum().sign(), s)
    agree = (T.sign() == s) & (T != 0)
    vals = T if weighted_election else T * w[:, None]
    num = torch.where(agree, vals, torch.zeros_like(vals)).sum(0)
    if disjoint == "mean":
        merged = num / agree.sum(0).clamp(min=1)
    elif disjoint == "weighted_mean":
        den = (agree * w[:, None]).sum(0)
        merged = num / torch.where(den == 0, torch.ones_like(den), den)
    elif disjoint == "sum":
        merged = num
    elif disjoint == "mean_all":
        merged = num / len(models)
    elif disjoint == "max":
        merged = torch.where(agree, T.abs(), torch.zeros_like(T)).max(0).values * s
    else:
        raise NotImplementedError(disjoint)
    flat = torch.cat([base[n].float().reshape(-1) for n in names]) + lam * merged
    out = dict(base)
    for n, piece in zip(names, torch.split(flat, sizes)):
        out[n] = piece.reshape(base[n].shape).to(base[n].dtype)
    return out
