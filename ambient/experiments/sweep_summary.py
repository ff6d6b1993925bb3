"""The sweep's numbers across training seeds: per-model means with intervals, and the headline comparison with EDM."""

import csv
import os

import numpy as np

from ambient.experiments import sweep_methods
from ambient.metrics import stats
from ambient.metrics.memorization import RATIO_THRESHOLD

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
    return (sweep_methods.order(sweep_methods.of_row(row)), round(row['kimg'], 3))


def aggregate(outdir, rows, seed=0):
    """One entry per (method, snapshot) over its training seeds: fractions with intervals, FD mean and spread."""
    groups = {}
    for row in rows:
        groups.setdefault(_group_key(row), []).append(row)
    out = []
    for _key, members in sorted(groups.items()):
        flags = [sample_flags(outdir, r) for r in members]
        thresholds = list(members[0]['fraction_above'])
        spec = sweep_methods.of_row(members[0])
        entry = dict(sigma_tn=members[0]['sigma_tn'], method=spec, kimg=members[0]['kimg'], epochs=members[0]['epochs'],
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
    """The last evaluated snapshot of each method, by method spec ('edm', 'ambient:0.5', ...), in sweep order."""
    last = {}
    for g in groups:
        spec = sweep_methods.of_row(g)
        if spec not in last or g['kimg'] > last[spec]['kimg']:
            last[spec] = g
    return dict(sorted(last.items(), key=lambda kv: sweep_methods.order(kv[0])))


def _overlap(a, b):
    return not (a['hi'] < b['lo'] or b['hi'] < a['lo'])


def compare(outdir, rows, base, new, seed=0):
    """How much less `new` copies than `base` (two aggregated final snapshots), and at what quality cost."""
    pick = lambda g: [sample_flags(outdir, r) for r in rows if _group_key(r) == _group_key(g)]
    fb, fn = pick(base), pick(new)
    out = dict(sigma_tn=new['sigma_tn'], method=sweep_methods.of_row(new), kimg=new['kimg'],
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
    """EDM against every other method (final snapshots), and the best ambient setting: the largest copy reduction
    among the ambient settings within the quality budget (or, when none is, the one closest to EDM's quality).
    The baselines (masking, noisy-only) are compared too but never chosen as the best ambient setting."""
    last = finals(groups)
    if 'edm' not in last or len(last) < 2:
        return None
    comparisons = [compare(outdir, rows, last['edm'], g, seed=seed) for s, g in last.items() if s != 'edm']
    comparisons = [c for c in comparisons if c['ratio']['mean'] is not None]
    ambient = [c for c in comparisons if sweep_methods.family(c['method']) == 'ambient']
    if not ambient:
        return dict(comparisons=comparisons, best=None)
    within = [c for c in ambient if c['fd_change'] is not None and c['fd_change'] <= TARGET_QUALITY_COST]
    if within:
        best = max(within, key=lambda c: c['ratio']['mean'])
    else:
        best = min(ambient, key=lambda c: float('inf') if c['fd_change'] is None else c['fd_change'])
    return dict(comparisons=comparisons, best=best)

#----------------------------------------------------------------------------
