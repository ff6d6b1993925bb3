"""The sweep's reports: sweep.json, sweep.md, report.md and the plots, from the rows the stages measured."""

import os

import dnnlib
from ambient import pareto
from ambient.sweep_stages import fmt_number, write_json

#----------------------------------------------------------------------------

def _pct(v):
    return '-' if v is None else f'{100 * v:.1f}%'

def _num(v, digits=2):
    return '-' if v is None else f'{v:.{digits}f}'

def markdown_table(rows, quality_label, thresholds):
    """sweep.md's table: one line per (sigma_tn, snapshot)."""
    head = ['sigma_tn', 'kimg', 'iters', 'epochs', quality_label, 'memorized (ratio < 1/3)',
            *[f'sim > {t}' for t in thresholds], 'mean top-1 sim']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in rows:
        cells = [fmt_number(r['sigma_tn']) + (' (EDM)' if r['sigma_tn'] == 0 else ''), f'{r["kimg"]:.1f}',
                 '-' if r['iters'] is None else str(r['iters']), _num(r['epochs'], 0), _num(r['fd']),
                 _pct(r['ratio_fraction']), *[_pct(r['fraction_above'].get(t)) for t in thresholds],
                 _num(r['similarity_mean'], 3)]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)

def write_results(cfg, summary):
    """sweep.json, sweep.md, pareto.png, curves.png and report.md in the output folder."""
    rows, label = summary['rows'], summary['quality_metric']
    write_json(os.path.join(cfg.outdir, 'sweep.json'), summary)
    thresholds = list(rows[0]['fraction_above']) if rows else []
    group_label = lambda g: 'EDM (sigma_tn=0)' if g == 0 else f'ambient sigma_tn={fmt_number(g)}'
    with_fd = [r for r in rows if r['fd'] is not None]
    if with_fd:
        pareto.plot_pareto(with_fd, os.path.join(cfg.outdir, 'pareto.png'), 'fd', 'ratio_fraction',
                           x_label=f'{label} (lower is better)', y_label='memorized fraction (L2 ratio < 1/3)',
                           group_label=group_label, title='Quality vs memorization along training')
    specs = [('ratio_fraction', 'memorized fraction (ratio < 1/3)'), ('similarity_mean', 'mean top-1 similarity')]
    if with_fd:
        specs.append(('fd', label))
    if rows:
        base = summary.get('baseline') or {}
        pareto.plot_curves(rows, os.path.join(cfg.outdir, 'curves.png'), 'epochs', specs, x_label='epochs',
                           group_label=group_label, baselines={k: base.get(k) for k, _ in specs},
                           baseline_label='held-out real images')
    md = [f'# Sweep: {summary["data"]["train"]}', '', markdown_table(rows, label, thresholds), '']
    md += [f'- {n}' for n in summary['notes']]
    dnnlib.util.atomic_write_bytes(os.path.join(cfg.outdir, 'sweep.md'), ('\n'.join(md) + '\n').encode())
    dnnlib.util.atomic_write_bytes(os.path.join(cfg.outdir, 'report.md'), report_text(cfg, summary).encode())

def report_text(cfg, summary):
    """report.md: what was measured and how, with the measured numbers (no conclusions beyond them)."""
    rows, label, base = summary['rows'], summary['quality_metric'], summary.get('baseline')
    final = {}
    for r in rows:
        final[r['sigma_tn']] = r # Rows are ordered by kimg within a sigma_tn: the last one is the final snapshot.
    lines = ['# Report', '',
             f'Training data: `{summary["data"]["train"]}` ({summary["data"]["num_train"]} images). '
             f'Models: sigma_tn in {{{", ".join(fmt_number(s) for s in summary["sigma_tn"])}}} (0 = EDM baseline, '
             'trained with `--loss=edm`; others with `--loss=ambient`), train.py options '
             f'`{" ".join(summary["train_opts"])}`, seed {cfg.seed}, one run per sigma_tn.', '',
             f'Each evaluated snapshot: {cfg.samples} samples from the EMA weights (seeds 0-{cfg.samples - 1}, '
             f'{cfg.steps}-step Heun sampler, generate.py), the same seeds for every snapshot.', '',
             '## How it was measured', '',
             f'- Memorization (`python -m ambient.memorization calc --detector={cfg.detector}`): a sample counts as '
             'memorized when its L2 distance (pixel space) to the nearest training image is less than 1/3 of its '
             'distance to the second-nearest (the ratio criterion); also reported: the fraction of samples whose '
             f'top-1 cosine similarity ({cfg.detector} features) to the training set exceeds each threshold, and the '
             'mean top-1 similarity.' + ('' if cfg.detector == 'dinov2' else ' The thresholds are the paper\'s, '
             f'which it applies to DINOv2 features; on {cfg.detector} features these fractions are not comparable '
             'with the paper\'s.'),
             f'- Quality: `{label}`, the Fréchet distance between samples and held-out real images (source images '
             'not in the training subset) in the penultimate-layer features of a small CNN classifier trained by '
             'this project on those held-out images (ambient/quality.py). It is not FID and is not comparable '
             f'with published FID numbers. Every row uses {cfg.samples} samples (one set of seeds): an FD from '
             'so few samples is biased upwards by an amount that depends on the samples\' own spread, and its '
             'sampling variability was not measured: this run does not say how large a difference between rows is '
             'meaningful.']
    if base:
        lines.append(f'- No-memorization baseline: the {base["num_samples"]} held-out real images measured the same '
                     f'way: ratio-criterion fraction {_pct(base["ratio_fraction"])}, mean top-1 similarity '
                     f'{base["similarity_mean"]:.3f}.')
    lines += [f'- {n}' for n in summary['notes']]
    lines += ['', '## Results', '', '| sigma_tn | final kimg | epochs | ' + label + ' | memorized (ratio) | mean top-1 sim |',
              '|---|---|---|---|---|---|']
    for s, r in sorted(final.items()):
        lines.append(f'| {fmt_number(s)} | {r["kimg"]:.1f} | {_num(r["epochs"], 0)} | {_num(r["fd"])} | '
                     f'{_pct(r["ratio_fraction"])} | {_num(r["similarity_mean"], 3)} |')
    lines += ['', f'Each fraction is over {cfg.samples} samples, so one sample is {_pct(1 / cfg.samples)} of it.']
    front = summary.get('pareto_front', [])
    if front:
        pts = ', '.join(f'sigma_tn={fmt_number(rows[i]["sigma_tn"])} at {rows[i]["epochs"]:.0f} epochs '
                        f'({label} {rows[i]["fd"]:.2f}, {_pct(rows[i]["ratio_fraction"])})' for i in front)
        lines += ['', f'Pareto frontier over all evaluated snapshots (minimising both {label} and the memorized '
                  f'fraction): {pts}.']
    lines += ['', 'Every row of `sweep.md` is one evaluated snapshot. Figures: `pareto.png` (quality vs memorized '
              'fraction, one line per sigma_tn along training, dashed: Pareto frontier), `curves.png` (metrics vs '
              'epochs). Samples and their nearest training images of the final snapshots:', '']
    for s, r in sorted(final.items()):
        lines.append(f'- sigma_tn={fmt_number(s)}: samples `{r["grid"]}`, nearest neighbours `{r["nearest"]}`')
    lines += ['', f'This invocation ran for {summary["seconds"] / 60:.1f} minutes (stages finished by an earlier '
              'invocation were skipped and are not counted).', '']
    return '\n'.join(lines)

#----------------------------------------------------------------------------
