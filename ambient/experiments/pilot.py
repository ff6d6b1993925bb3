"""A pilot sweep around the advised sigma_tn: EDM (0), lo, recommended and hi, one training seed, and which of them
lie on the Pareto front of quality against memorized fraction (ambient/experiments/sweep.py does the work)."""

import dnnlib
from ambient.experiments import sweep

ROLES = ('EDM', 'lo', 'recommended', 'hi')


def pilot_sigmas(recommendation):
    """[(sigma_tn, role)] of the pilot: 0 (EDM), lo, recommended, hi; a value shared by two roles is trained once."""
    lo, hi = recommendation['range']
    out = []
    for value, role in zip((0.0, lo, recommendation['recommended'], hi), ROLES):
        value = float(value)
        if value < 0:
            raise dnnlib.util.UserError(f'sigma_tn {value} of the pilot is negative')
        known = [i for i, (v, _) in enumerate(out) if v == value]
        if known:
            out[known[0]] = (value, f'{out[known[0]][1]}, {role}')
        else:
            out.append((value, role))
    return out


def run_pilot(data, recommendation, outdir, train_opts=(), heldout=None, seed=0, samples=None, download=False,
              tools=None, **sweep_options):
    """Train and evaluate the pilot models (skipping finished stages, as every sweep) and summarise them.

    Returns a dict: outdir, runs ([{sigma_tn, role, fd, ratio_fraction, kimg, on_front}], the final snapshot of each
    model), front_sigma_tn (the sigma_tn values on the Pareto front, ascending), quality_metric (None without
    held-out images: then there is no front). `tools` replaces the stage command lines (tests).
    """
    sigmas = pilot_sigmas(recommendation)
    cfg = sweep.make_config(outdir, data=data, heldout=heldout, sigma_tn=tuple(v for v, _ in sigmas), seeds=(int(seed),),
                            every=0, samples=samples, download=download or None, train_opts=tuple(train_opts),
                            **sweep_options)
    summary = sweep.run_sweep(cfg, tools=tools)
    rows = summary['rows']
    front = set(summary['pareto_front'])
    runs = []
    for value, role in sigmas:
        mine = [i for i, r in enumerate(rows) if r['sigma_tn'] is not None and float(r['sigma_tn']) == value]
        if not mine:
            runs.append(dict(sigma_tn=value, role=role, fd=None, ratio_fraction=None, kimg=None, on_front=False))
            continue
        i = max(mine, key=lambda j: rows[j]['kimg']) # the final snapshot (the pilot evaluates only that one)
        runs.append(dict(sigma_tn=value, role=role, fd=rows[i]['fd'], ratio_fraction=rows[i]['ratio_fraction'],
                         kimg=rows[i]['kimg'], on_front=i in front))
    return dict(outdir=cfg.outdir, seed=int(seed), train_opts=list(cfg.train_opts), quality_metric=summary['quality_metric'],
                runs=runs, front_sigma_tn=sorted(r['sigma_tn'] for r in runs if r['on_front']),
                notes=list(summary['notes']))
