"""Intervals for the sweep's numbers: Wilson intervals, and bootstraps over training seeds and samples."""

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_REPS = 4000

#----------------------------------------------------------------------------

def wilson(k, n, confidence=CONFIDENCE):
    """Wilson score interval (lo, hi) of a fraction k/n."""
    if n <= 0:
        return (float('nan'), float('nan'))
    z = _z(confidence)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def _z(confidence):
    from scipy.stats import norm # pylint: disable=import-outside-toplevel
    return float(norm.ppf(0.5 + confidence / 2))


def _resample_means(groups, rng, reps):
    """Bootstrap means of the pooled flags: seeds drawn with replacement, then samples within each drawn seed."""
    groups = [np.asarray(g, dtype=np.float64) for g in groups]
    out = np.empty(reps)
    for r in range(reps):
        picked = rng.integers(0, len(groups), size=len(groups)) if len(groups) > 1 else [0]
        total = count = 0.0
        for i in picked:
            g = groups[i]
            total += g[rng.integers(0, len(g), size=len(g))].sum()
            count += len(g)
        out[r] = total / count
    return out


def fraction_interval(groups, seed=0, reps=BOOTSTRAP_REPS, confidence=CONFIDENCE):
    """Mean and interval of a fraction measured on several training seeds: groups = one 0/1 array per seed.

    With one seed this is the Wilson interval over its samples; with several, a two-level bootstrap (seeds,
    then samples within a seed), so that the spread between training runs widens the interval as it should.
    """
    groups = [np.asarray(g, dtype=np.float64) for g in groups if len(g)]
    if not groups:
        return dict(mean=None, lo=None, hi=None)
    pooled = np.concatenate(groups)
    if len(groups) == 1:
        lo, hi = wilson(pooled.sum(), len(pooled), confidence)
    else:
        means = _resample_means(groups, np.random.default_rng(seed), reps)
        lo, hi = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return dict(mean=float(pooled.mean()), lo=float(lo), hi=float(hi))


def reduction_interval(base_groups, new_groups, seed=0, reps=BOOTSTRAP_REPS, confidence=CONFIDENCE):
    """Relative reduction 1 - p_new / p_base of two fractions (seeds x samples each), with a bootstrap interval."""
    base = [np.asarray(g, dtype=np.float64) for g in base_groups if len(g)]
    new = [np.asarray(g, dtype=np.float64) for g in new_groups if len(g)]
    if not base or not new:
        return dict(mean=None, lo=None, hi=None)
    p_base = np.concatenate(base).mean()
    p_new = np.concatenate(new).mean()
    if p_base == 0:
        return dict(mean=None, lo=None, hi=None)
    rng = np.random.default_rng(seed)
    b = _resample_means(base, rng, reps)
    n = _resample_means(new, rng, reps)
    ok = b > 0
    ratios = 1 - n[ok] / b[ok]
    lo, hi = np.quantile(ratios, [(1 - confidence) / 2, (1 + confidence) / 2])
    return dict(mean=float(1 - p_new / p_base), lo=float(lo), hi=float(hi))


def value_spread(values):
    """Mean, standard deviation and range of a number measured once per training seed."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return dict(mean=None, std=None, min=None, max=None, n=0)
    return dict(mean=float(v.mean()), std=float(v.std(ddof=1)) if v.size > 1 else 0.0, min=float(v.min()),
                max=float(v.max()), n=int(v.size))

#----------------------------------------------------------------------------
