"""The sweep's numbers across training seeds: per-model means with intervals, and the headline comparison with EDM."""

import csv
import os

import numpy as np

from ambient import stats
from ambient.memorization import RATIO_THRESHOLD

# The bar for "the method copies clearly less at equal quality" (relative, final snapshots).
TARGET_REDUCTION = 0.40
TARGET_QUALITY_COST = 0.10

#----------------------------------------------------------------------------

def sample_flags(outdir, row):
    """Per-sample arrays of one evaluated snapshot, from its neighbors.csv: 'ratio' and 'similarity'."""
    with open(os.path.join(outdir, row['neighbors']), 'r', encoding='utf8', newline='') as f:
        table = list(csv.DictReader(f))
    return dict(ratio=np.array([float(r['ratio']) for r in table]),
                similarity=np.array([float(r['similarity']) for r in table]))


def _group_key(row):
    return (row['sigma_tn'], round(row['kimg'], 3))


def aggregate(outdir, rows, seed=0):
    """One entry per (sigma_tn, snapshot) over its training seeds: fractions with intervals, FD mean and spread."""
    groups = {}
    for row in rows:
        groups.setdefault(_group_key(row), []).append(row)
    out = []
    for (sigma_tn, _kimg), members in sorted(groups.items()):
        flags = [sample_flags(outdir, r) for r in members]
        thresholds = list(members[0]['fraction_above'])
        entry = dict(sigma_tn=sigma_tn, kimg=members[0]['kimg'], epochs=members[0]['epochs'],
                     iters=members[0]['iters'], seeds=[r['seed'] for r in members],
                     num_samples=int(sum(len(f['ratio']) for f in flags)),
                     ratio=stats.fraction_interval([f['ratio'] < RATIO_THRESHOLD for f in flags], seed=seed),
                     above={t: stats.fraction_interval([f['similarity'] > float(t) for f in flags], seed=seed)
                            for t in thresholds},
                     similarity_mean=stats.value_spread([r['similarity_mean'] for r in members]),
                     fd=stats.value_spread([r['fd'] for r in members]))
        out.append(entry)
    return out


def finals(groups):
    """The last evaluated snapshot of each sigma_tn, by sigma_tn."""
    last = {}
    for g in groups:
        if g['sigma_tn'] not in last or g['kimg'] > last[g['sigma_tn']]['kimg']:
            last[g['sigma_tn']] = g
    return dict(sorted(last.items()))


def _overlap(a, b):
    return not (a['hi'] < b['lo'] or b['hi'] < a['lo'])


def compare(outdir, rows, base, new, seed=0):
    """How much less `new` copies than `base` (two aggregated final snapshots), and at what quality cost."""
    pick = lambda g: [sample_flags(outdir, r) for r in rows if _group_key(r) == (g['sigma_tn'], round(g['kimg'], 3))]
    fb, fn = pick(base), pick(new)
    out = dict(sigma_tn=new['sigma_tn'], kimg=new['kimg'],
               ratio=stats.reduction_interval([f['ratio'] < RATIO_THRESHOLD for f in fb],
                                              [f['ratio'] < RATIO_THRESHOLD for f in fn], seed=seed),
               ratio_separated=not _overlap(base['ratio'], new['ratio']),
               above={t: stats.reduction_interval([f['similarity'] > float(t) for f in fb],
                                                  [f['similarity'] > float(t) for f in fn], seed=seed)
                      for t in base['above']})
    fd_b, fd_n = base['fd']['mean'], new['fd']['mean']
    out['fd_change'] = None if fd_b is None or fd_n is None or fd_b == 0 else fd_n / fd_b - 1
    r = out['ratio']['mean']
    out['meets_target'] = bool(r is not None and r >= TARGET_REDUCTION and out['ratio_separated']
                               and out['fd_change'] is not None and out['fd_change'] <= TARGET_QUALITY_COST)
    return out


def headline(outdir, rows, groups, seed=0):
    """EDM against every ambient setting (final snapshots), and the best one: the largest copy reduction among
    the settings within the quality budget (or, when none is, the one closest to EDM's quality)."""
    last = finals(groups)
    if 0.0 not in last or len(last) < 2:
        return None
    comparisons = [compare(outdir, rows, last[0.0], g, seed=seed) for s, g in last.items() if s != 0.0]
    comparisons = [c for c in comparisons if c['ratio']['mean'] is not None]
    if not comparisons:
        return dict(comparisons=[], best=None)
    within = [c for c in comparisons if c['fd_change'] is not None and c['fd_change'] <= TARGET_QUALITY_COST]
    if within:
        best = max(within, key=lambda c: c['ratio']['mean'])
    else:
        best = min(comparisons, key=lambda c: float('inf') if c['fd_change'] is None else c['fd_change'])
    return dict(comparisons=comparisons, best=best)

#----------------------------------------------------------------------------
