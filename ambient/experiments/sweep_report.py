"""The sweep's reports: sweep.json, sweep.md, report.md and the plots, from the rows the stages measured."""

import os

import dnnlib
from ambient.experiments import pareto, sweep_methods, sweep_summary
from ambient.experiments.sweep_stages import fmt_number, write_json

#----------------------------------------------------------------------------
# Formatting.

def _pct(v):
    return '-' if v is None else f'{100 * v:.1f}%'


def _num(v, digits=2):
    return '-' if v is None else f'{v:.{digits}f}'


def _ci(f):
    """'12.5% [8.0, 17.9]' for a fraction with its interval."""
    if f is None or f.get('mean') is None:
        return '-'
    return f'{_pct(f["mean"])} [{100 * f["lo"]:.1f}, {100 * f["hi"]:.1f}]'


def _spread(v, digits=2):
    """'14.31 (13.9-14.8)' for a per-seed number: mean and range over the seeds."""
    if v is None or v.get('mean') is None:
        return '-'
    if v['n'] < 2:
        return _num(v['mean'], digits)
    return f'{_num(v["mean"], digits)} ({_num(v["min"], digits)}-{_num(v["max"], digits)})'


def model_label(sigma_tn):
    """'EDM (sigma_tn=0)', 'ambient sigma_tn=0.5', 'masking p=0.2', 'noisy-only sigma_tn=0.5' (a spec, a number or a
    plot group key (order, spec))."""
    if isinstance(sigma_tn, tuple):
        sigma_tn = sigma_tn[-1]
    return sweep_methods.label(sigma_tn)


def _model_cell(r):
    """sweep.md's first column: '0 (EDM)', '0.5' for ambient, the label for the baselines."""
    spec = sweep_methods.of_row(r)
    if sweep_methods.family(spec) in ('edm', 'ambient'):
        return fmt_number(sweep_methods.param(spec)) + (' (EDM)' if spec == 'edm' else '')
    return sweep_methods.label(spec)

#----------------------------------------------------------------------------
# Tables.

def markdown_table(rows, quality_label, thresholds):
    """sweep.md's per-run table: one line per (sigma_tn, seed, snapshot)."""
    head = ['sigma_tn', 'seed', 'kimg', 'iters', 'epochs', quality_label or 'quality', 'memorized (ratio < 1/3)',
            *[f'sim > {t}' for t in thresholds], 'mean top-1 sim']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in rows:
        cells = [_model_cell(r), str(r.get('seed', 0)),
                 f'{r["kimg"]:.1f}', '-' if r['iters'] is None else str(r['iters']), _num(r['epochs'], 0),
                 _num(r['fd']), _pct(r['ratio_fraction']), *[_pct(r['fraction_above'].get(t)) for t in thresholds],
                 _num(r['similarity_mean'], 3)]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def group_table(groups, quality_label, thresholds):
    """Means over training seeds with 95% intervals: one line per (method, snapshot); the paper's Table 2 columns
    (quality, fraction above each similarity threshold, mean top-1 similarity) plus the ratio criterion."""
    head = ['model', 'seeds', 'epochs', f'{quality_label or "quality"} mean (range)', 'memorized (ratio < 1/3)',
            *[f'sim > {t}' for t in thresholds], 'mean top-1 sim']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for g in groups:
        cells = [model_label(sweep_methods.of_row(g)), str(len(g['seeds'])), _num(g['epochs'], 0), _spread(g['fd']),
                 _ci(g['ratio']), *[_ci(g['above'].get(t)) for t in thresholds], _spread(g.get('similarity_mean'), 3)]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)

#----------------------------------------------------------------------------
# Plots.

def _flat(groups):
    """Aggregated groups as flat rows for the plotting helpers."""
    out = []
    for g in groups:
        spec = sweep_methods.of_row(g)
        out.append(dict(sigma_tn=g['sigma_tn'], model=(*sweep_methods.order(spec), spec), kimg=g['kimg'], epochs=g['epochs'], fd=g['fd']['mean'],
                        fd_lo=g['fd']['min'], fd_hi=g['fd']['max'], ratio=g['ratio']['mean'],
                        ratio_lo=g['ratio']['lo'], ratio_hi=g['ratio']['hi'],
                        similarity_mean=g['similarity_mean']['mean']))
    return out


def write_plots(cfg, summary, groups):
    """pareto.png (quality vs copies, error bars) and curves.png (metrics along training, interval bands)."""
    plot_pareto_png(summary, groups, os.path.join(cfg.outdir, 'pareto.png'))
    plot_curves_png(summary, groups, os.path.join(cfg.outdir, 'curves.png'))


def plot_pareto_png(summary, groups, path):
    """Quality vs memorized fraction of every model along training (a marker per method family); False without quality."""
    flat, label = _flat(groups), summary['quality_metric']
    with_fd = [r for r in flat if r['fd'] is not None]
    if not with_fd:
        return False
    pareto.plot_pareto(with_fd, path, 'fd', 'ratio',
                       x_label=f'{label} (lower is better; bars: range over seeds)',
                       y_label='memorized fraction (L2 ratio < 1/3; bars: 95% CI)', group_label=model_label,
                       title='Quality vs memorization along training', x_err=('fd_lo', 'fd_hi'),
                       y_err=('ratio_lo', 'ratio_hi'), group_key='model',
                       group_marker=lambda g: sweep_methods.MARKERS[sweep_methods.family(g[-1])])
    return True


def plot_curves_png(summary, groups, path):
    """Memorized fraction, mean top-1 similarity (and quality) against epochs, one line per model; False when empty."""
    flat, label = _flat(groups), summary['quality_metric']
    specs = [('ratio', 'memorized fraction (ratio < 1/3)'), ('similarity_mean', 'mean top-1 similarity')]
    if any(r['fd'] is not None for r in flat):
        specs.append(('fd', label))
    if not flat:
        return False
    base = summary.get('baseline') or {}
    base = dict(ratio=base.get('ratio_fraction'), similarity_mean=base.get('similarity_mean'))
    pareto.plot_curves(flat, path, 'epochs', specs, x_label='epochs', group_label=model_label, group_key='model',
                       baselines=base, baseline_label='held-out real images',
                       bands=dict(ratio=('ratio_lo', 'ratio_hi'), fd=('fd_lo', 'fd_hi')))
    return True

#----------------------------------------------------------------------------
# Files.

def write_results(cfg, summary):
    """sweep.json, sweep.md, pareto.png, curves.png and report.md in the output folder."""
    rows, label = summary['rows'], summary['quality_metric']
    groups = sweep_summary.aggregate(cfg.outdir, rows)
    summary['groups'] = groups
    summary['headline'] = sweep_summary.headline(cfg.outdir, rows, groups)
    write_json(os.path.join(cfg.outdir, 'sweep.json'), summary)
    thresholds = list(rows[0]['fraction_above']) if rows else []
    write_plots(cfg, summary, groups)
    md = [f'# Sweep: {summary["data"]["train"]}', '', '## Means over training seeds (95% intervals)', '',
          group_table(groups, label, thresholds), '', '## Every run', '', markdown_table(rows, label, thresholds), '']
    md += [f'- {n}' for n in summary['notes']]
    dnnlib.util.atomic_write_bytes(os.path.join(cfg.outdir, 'sweep.md'), ('\n'.join(md) + '\n').encode())
    dnnlib.util.atomic_write_bytes(os.path.join(cfg.outdir, 'report.md'), report_text(cfg, summary).encode())


def thresholds_of(summary):
    """The similarity thresholds the rows were measured at, as strings."""
    rows = summary.get('rows') or []
    return list(rows[0]['fraction_above']) if rows else []


def headline_lines(summary):
    """The report's first paragraph: how much less the best ambient setting copies than EDM, at what quality cost."""
    h, label = summary.get('headline'), summary['quality_metric'] or 'quality'
    if not h or not h.get('best'):
        return ['No comparison: the sweep needs EDM (sigma_tn=0) and at least one ambient setting with copies '
                'measured at their final snapshots.']
    groups = sweep_summary.finals(summary['groups'])
    b, edm = h['best'], groups['edm']
    amb = groups[b['method']]
    r = b['ratio']
    cost = '-' if b['fd_change'] is None else f'{100 * b["fd_change"]:+.1f}%'
    verdict = ('meets' if b['meets_target'] else 'does NOT meet')
    lines = [f'**Best ambient setting: sigma_tn={fmt_number(b["sigma_tn"])}.** At the final snapshot it copies '
             f'{_ci(amb["ratio"])} of its samples (nearest/second-nearest L2 ratio < 1/3) against EDM\'s '
             f'{_ci(edm["ratio"])}: {_pct(r["mean"])} fewer copies (95% CI {100 * r["lo"]:.0f}% to '
             f'{100 * r["hi"]:.0f}%), with {label} {_spread(amb["fd"])} vs EDM\'s {_spread(edm["fd"])} '
             f'({cost} relative).',
             '',
             f'It {verdict} this project\'s bar ({100 * sweep_summary.TARGET_REDUCTION:.0f}% fewer copies, '
             f'intervals not overlapping, quality no more than {100 * sweep_summary.TARGET_QUALITY_COST:.0f}% '
             f'worse): reduction {_pct(r["mean"])}, intervals '
             f'{"separate" if b["ratio_separated"] else "overlap"}, quality change {cost}.', '',
             'The same comparison by the similarity thresholds (fewer samples above each, relative to EDM, 95% CI): ' +
             '; '.join(f'> {t}: ' + ('-' if v['mean'] is None else
                                      f'{_pct(v["mean"])} [{100 * v["lo"]:.0f}%, {100 * v["hi"]:.0f}%]')
                       for t, v in b['above'].items()) + '.', '',
             'Every other model against EDM (final snapshots): ' + '; '.join(
                 f'{model_label(c["method"])}: {_pct(c["ratio"]["mean"])} fewer copies, {label} '
                 + ('-' if c['fd_change'] is None else f'{100 * c["fd_change"]:+.1f}%') for c in h['comparisons']) + '.']
    return lines


def _method_lines(cfg, summary):
    label, base = summary['quality_metric'], summary.get('baseline')
    lines = ['## How it was measured', '',
             f'- Memorization (`python -m ambient.memorization calc --detector={cfg.detector}`): a sample counts as '
             'memorized when its L2 distance (pixel space) to the nearest training image is less than 1/3 of its '
             'distance to the second-nearest (the ratio criterion); also reported: the fraction of samples whose '
             f'top-1 cosine similarity ({cfg.detector} features) to the training set exceeds each threshold, and the '
             'mean top-1 similarity.' + (f' Similarity thresholds: {", ".join(thresholds_of(summary))} (preset '
             f'`{cfg.get("thresholds_preset") or "all"}`: the paper uses 0.9/0.925/0.95 for CIFAR-10 and ImageNet, '
             '0.85/0.875/0.9 for FFHQ).') + ('' if cfg.detector == 'dinov2' else ' The thresholds are the paper\'s, '
             f'which it applies to DINOv2 features; on {cfg.detector} features these fractions are not comparable '
             'with the paper\'s.'),
             '- Intervals: 95%. With one training seed, the Wilson interval over its samples; with several, a '
             'two-level bootstrap (seeds drawn with replacement, then samples within each seed), so that the '
             'spread between training runs counts. Quality is one number per seed: its mean and range are shown. '
             f'Each seed\'s fraction is over {cfg.samples} samples, so one sample is {100 / cfg.samples:.3g}% of it.']
    if label:
        lines.append(f'- Quality: `{label}`, the Fréchet distance between samples and held-out real images (source '
                     'images not in the training subset) in the penultimate-layer features of a small CNN classifier '
                     'trained by this project on those held-out images (ambient/metrics/quality.py). It is not FID and is not '
                     f'comparable with published FID numbers; from {cfg.samples} samples it is biased upwards by an '
                     'amount that depends on the samples\' own spread.' +
                     ('' if summary.get('training_set_quality') is None else
                      f' Reference: the {summary["data"]["num_train"]} training images themselves score '
                      f'{label} {summary["training_set_quality"]:.2f} (a model that reproduced its training set exactly).'))
    else:
        lines.append('- Quality: not measured (no held-out real images); the tables leave its column empty.')
    if base:
        lines.append(f'- No-memorization baseline: the {base["num_samples"]} held-out real images measured the same '
                     f'way: ratio-criterion fraction {_pct(base["ratio_fraction"])}, mean top-1 similarity '
                     f'{base["similarity_mean"]:.3f}.')
    return lines + [f'- {n}' for n in summary['notes']]


def report_text(cfg, summary):
    """report.md: the headline, what was measured and how, with the measured numbers (no conclusions beyond them)."""
    rows, label = summary['rows'], summary['quality_metric']
    groups = summary['groups']
    thresholds = list(rows[0]['fraction_above']) if rows else []
    seeds = sorted({r.get('seed', 0) for r in rows})
    lines = ['# Report', '', *headline_lines(summary), '',
             f'Training data: `{summary["data"]["train"]}` ({summary["data"]["num_train"]} images). '
             f'Models: {", ".join(model_label(m) for m in summary.get("methods") or summary["sigma_tn"])} (EDM '
             'trained with `--loss=edm`, ambient models with `--loss=ambient`, the baselines with `--loss=masking` / '
             '`--loss=noisy_only`), train.py options '
             f'`{" ".join(summary["train_opts"])}`' + (f', ambient models also `{" ".join(summary["ambient_opts"])}`'
                                                         if summary.get('ambient_opts') else '') +
             f', training seeds {seeds} (an ambient model\'s noisy copies are drawn with its training seed).', '',
             f'Each evaluated snapshot: {cfg.samples} samples from the EMA weights (seeds 0-{cfg.samples - 1}, '
             f'{cfg.steps}-step Heun sampler, generate.py), the same seeds for every snapshot.', '',
             '## Final snapshots', '', group_table(list(sweep_summary.finals(groups).values()), label, thresholds), '',
             '## Along training', '', group_table(groups, label, thresholds), '', *_method_lines(cfg, summary)]
    front = summary.get('pareto_front', [])
    if front:
        pts = ', '.join(f'{model_label(sweep_methods.of_row(rows[i]))} seed {rows[i].get("seed", 0)} at '
                        f'{rows[i]["epochs"]:.0f} epochs ({label} {rows[i]["fd"]:.2f}, {_pct(rows[i]["ratio_fraction"])})'
                        for i in front)
        lines += ['', f'Pareto frontier over all evaluated snapshots of all seeds (minimising both {label} and the '
                  f'memorized fraction): {pts}.']
    lines += ['', 'Every run and snapshot is a row of `sweep.md`. Figures: `pareto.png` (quality vs memorized '
              'fraction, one line per sigma_tn along training, seed means with error bars, dashed: Pareto frontier), '
              '`curves.png` (metrics vs epochs, 95% bands).', '', '## Most-copied samples', '',
              'Final snapshot of the first seed: its 16 samples most similar to a training image, each beside that '
              'training image (label: similarity and training index). On photos, people judge copies by looking.', '']
    for s in sorted({sweep_methods.of_row(r) for r in rows}, key=sweep_methods.order):
        first = [r for r in rows if sweep_methods.of_row(r) == s and r.get('seed', 0) == seeds[0]]
        if first:
            r = max(first, key=lambda r: r['kimg'])
            lines += [f'**{model_label(s)}** (samples `{r["grid"]}`)', '', f'![{model_label(s)}]({r["nearest"]})', '']
    figures = summary.get('figures') or {}
    if figures:
        lines += ['', '## Inside the models', '']
        if 'denoise' in figures:
            lines += [f'![denoising]({figures["denoise"]})', '',
                      f'`{figures["denoise"]}` (as the paper\'s Figure 3): for a few training images, each model\'s '
                      'clean prediction D(x0 + sigma n) at several noise levels, with the same noise n for every model. '
                      'A model that memorizes returns its training image even from very noisy inputs; one that learned '
                      'the distribution returns a blurry average at high noise.', '']
        for key, path in figures.items():
            if key.startswith('trajectory'):
                lines += [f'![trajectories]({path})', '',
                          f'`{path}` (the paper\'s Lemma 4.1): where EDM\'s and the ambient model\'s sampling '
                          'trajectories stand when they reach sigma_tn: distance to the nearest training image and to '
                          'the nearest noisy copy x_tn, in units of sigma_tn*sqrt(dimension). The ambient optimum '
                          'lands on the noisy copies (distance 0 to x_tn), EDM\'s lands about one unit from a training '
                          'image.', '']
    lines += ['', f'This invocation ran for {summary["seconds"] / 60:.1f} minutes (stages finished by an earlier '
              'invocation were skipped and are not counted).', '']
    return '\n'.join(lines)

#----------------------------------------------------------------------------
