"""One HTML page for a set of training runs: loss curves, options, sample grids, memorization and quality.

    python -m ambient.report RUN_DIR [RUN_DIR ...] --dest=DIR

Each RUN_DIR is a train.py run directory (it holds stats.jsonl) or an ambient.sweep output folder (its runs/*
are taken, and its pareto.png / curves.png shown). DIR receives index.html and the figures drawn from the
stats (loss.png, regimes.png, evaluations.png). Every image, those figures and the existing sample grids and
nearest-neighbour grids alike, is embedded in index.html as a data URI: the page is one file that opens in
any browser without a server and without the run directories.

Where a run lies in a sweep (SWEEP/runs/NAME), the evaluations of its snapshots are read from
SWEEP/evals/NAME/snapshot-KKKKKK/: grid.png (samples), memorization/metrics.json and nearest.png,
quality.json. Nothing is computed that is not already on disk.
"""

import base64
import html
import json
import math
import os


import dnnlib
from ambient.experiments import pareto

REGIME_STATS = [('Loss/ambient/below_sigma_tn', 'loss, sigma < sigma_tn (clean targets)'),
                ('Loss/ambient/above_sigma_tn', 'loss, sigma >= sigma_tn (noisy targets)'),
                ('Loss/ambient/fraction_above', 'fraction of items with sigma >= sigma_tn')]

#----------------------------------------------------------------------------
# Reading runs.

def _read_json(path):
    """A JSON file's contents, or None when it is absent or unreadable."""
    try:
        with open(path, 'r', encoding='utf8') as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def read_stats(path):
    """The lines of a stats.jsonl as dicts; a torn or foreign line (a run killed mid-write) is skipped."""
    rows = []
    with open(path, 'r', encoding='utf8') as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows

def series(rows, name):
    """(kimg list, mean list) of one statistic over the ticks where it has finite values."""
    xs, ys = [], []
    for row in rows:
        value, kimg = row.get(name), row.get('Progress/kimg')
        if not isinstance(value, dict) or not isinstance(kimg, dict) or not value.get('num'):
            continue
        try:
            x, y = float(kimg['mean']), float(value['mean'])
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(x) and math.isfinite(y):
            xs.append(x)
            ys.append(y)
    return xs, ys

def _evaluations(run_dir):
    """Evaluated snapshots of a run inside a sweep (SWEEP/runs/NAME -> SWEEP/evals/NAME/snapshot-*), by kimg."""
    parent = os.path.dirname(os.path.abspath(run_dir))
    if os.path.basename(parent) != 'runs':
        return []
    evals = os.path.join(os.path.dirname(parent), 'evals', os.path.basename(os.path.abspath(run_dir)))
    if not os.path.isdir(evals):
        return []
    found = []
    for name in sorted(os.listdir(evals)):
        folder = os.path.join(evals, name)
        if not (name.startswith('snapshot-') and name[len('snapshot-'):].isdigit() and os.path.isdir(folder)):
            continue
        files = dict(grid=os.path.join(folder, 'grid.png'), nearest=os.path.join(folder, 'memorization', 'nearest.png'),
                     histogram=os.path.join(folder, 'memorization', 'histogram.png'))
        snap = dnnlib.EasyDict(kimg=int(name[len('snapshot-'):]), folder=folder,
                               metrics=_read_json(os.path.join(folder, 'memorization', 'metrics.json')),
                               quality=_read_json(os.path.join(folder, 'quality.json')),
                               **{k: (p if os.path.isfile(p) else None) for k, p in files.items()})
        if snap.grid or snap.metrics or snap.quality:
            found.append(snap)
    return found

def load_run(run_dir):
    """Everything the page shows of one run directory (UserError when it has no stats.jsonl)."""
    stats_path = os.path.join(run_dir, 'stats.jsonl')
    if not os.path.isfile(stats_path):
        raise dnnlib.util.UserError(f'{run_dir}: no stats.jsonl (not a train.py run directory nor a sweep folder)')
    name = os.path.basename(os.path.normpath(os.path.abspath(run_dir)))
    return dnnlib.EasyDict(path=run_dir, name=name, stats=read_stats(stats_path),
                           options=_read_json(os.path.join(run_dir, 'training_options.json')) or {},
                           evals=_evaluations(run_dir))

def find_runs(paths):
    """([run directories], [sweep folders]) named by the arguments, in order; UserError for anything else."""
    runs, sweeps = [], []
    for path in paths:
        if not os.path.isdir(path):
            raise dnnlib.util.UserError(f'{path}: no such directory')
        if os.path.isfile(os.path.join(path, 'stats.jsonl')):
            runs.append(path)
            continue
        sub = os.path.join(path, 'runs')
        inner = sorted(os.path.join(sub, d) for d in os.listdir(sub)) if os.path.isdir(sub) else []
        inner = [d for d in inner if os.path.isfile(os.path.join(d, 'stats.jsonl'))]
        if not inner:
            raise dnnlib.util.UserError(f'{path}: no stats.jsonl (not a train.py run directory nor a sweep folder)')
        runs += inner
        sweeps.append(path)
    return runs, sweeps

#----------------------------------------------------------------------------
# Figures.

def _label(run, names):
    """The run's name, shortened to its distinguishing part when runs share a parent (sweeps: sigma_tn-0.5)."""
    return run.name if names.count(run.name) == 1 else run.path

def plot_loss(runs, path):
    """Loss/loss against kimg, one line per run (log scale); False when no run has it."""
    plt = pareto.pyplot()
    labels = [r.name for r in runs]
    curves = [(_label(r, labels), *series(r.stats, 'Loss/loss')) for r in runs]
    if not any(xs for _, xs, _ in curves):
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, xs, ys in curves:
        if xs:
            ax.plot(xs, ys, 'o-', markersize=3, linewidth=1.2, label=label)
    ax.set_xlabel('kimg (thousands of training images seen)')
    ax.set_ylabel('training loss (mean per tick)')
    values = [y for _, _, ys in curves for y in ys]
    if min(values) > 0 and max(values) > 10 * min(values): # Log scale only where it helps: labels stay plain.
        ax.set_yscale('log')
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title('Training loss')
    pareto.save_figure(fig, path)
    return True

def plot_regimes(runs, path):
    """The ambient loss per regime and the noisy fraction against kimg; False when no run reports them."""
    plt = pareto.pyplot()
    labels = [r.name for r in runs]
    have = [r for r in runs if series(r.stats, REGIME_STATS[0][0])[0] or series(r.stats, REGIME_STATS[1][0])[0]]
    if not have:
        return False
    fig, axes = plt.subplots(1, len(REGIME_STATS), figsize=(4.6 * len(REGIME_STATS), 3.8), squeeze=False)
    for ax, (name, title) in zip(axes[0], REGIME_STATS):
        for run in runs:
            xs, ys = series(run.stats, name)
            if run in have and xs:
                ax.plot(xs, ys, 'o-', markersize=3, linewidth=1.2, label=_label(run, labels))
            else:
                ax.plot([], []) # Keeps each run's colour the same as in the loss figure.
        ax.set_xlabel('kimg')
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
    handles, labels_shown = axes[0][-1].get_legend_handles_labels() # One legend for the three panels, below them.
    fig.legend(handles, labels_shown, loc='lower center', ncol=min(len(handles), 3), fontsize=8, bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    pareto.save_figure(fig, path)
    return True

def _eval_rows(runs):
    rows = []
    for run in runs:
        for snap in run.evals:
            row = dict(run=run.name, kimg=snap.kimg)
            if snap.metrics:
                row.update(ratio_fraction=snap.metrics.get('ratio_fraction'), similarity_mean=snap.metrics.get('similarity_mean'))
            fd = _first_fd(snap.quality)
            if fd is not None:
                row['fd'] = fd[1]
            rows.append(row)
    return rows

def _first_fd(quality):
    """(name, value) of the first FD_* entry of a quality.json (the sweep's own metric), or None."""
    for key, value in (quality or {}).items():
        if key.startswith('FD_') and isinstance(value, (int, float)):
            return key, float(value)
    return None

def plot_evaluations(runs, path):
    """Memorized fraction, mean similarity and FD of the evaluated snapshots against kimg; False when none."""
    rows = _eval_rows(runs)
    specs = [(key, label) for key, label in [('ratio_fraction', 'memorized fraction'),
                                             ('similarity_mean', 'mean nearest similarity'),
                                             ('fd', 'FD (lower: better)')]
             if any(r.get(key) is not None for r in rows)]
    if not specs:
        return False
    pareto.plot_curves(rows, path, 'kimg', specs, group_key='run', x_label='kimg', group_label=str)
    return True

#----------------------------------------------------------------------------
# The page.

CSS = '''
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .92em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; }
img.grid { image-rendering: pixelated; width: 256px; }
figure { display: inline-block; margin: .4em 1em .8em 0; vertical-align: top; }
figcaption { font-size: .85em; color: #555; }
code { background: #f4f4f4; padding: 0 .25em; }
.note { color: #666; font-size: .9em; }
'''

def _esc(value):
    return html.escape(str(value), quote=True)

def _data_uri(path):
    with open(path, 'rb') as f:
        return 'data:image/png;base64,' + base64.b64encode(f.read()).decode('ascii')

def _img(path, alt, css_class=None):
    cls = f' class="{css_class}"' if css_class else ''
    return f'<img{cls} src="{_data_uri(path)}" alt="{_esc(alt)}">'

def _fmt(value, digits=4):
    if value is None:
        return ''
    if isinstance(value, float):
        return f'{value:.{digits}g}'
    return _esc(value)

def _short_class(name):
    return str(name).rsplit('.', 1)[-1] if name else ''

def options_summary(options):
    """[(label, value)] of the training options that tell runs apart."""
    net, loss, data, opt = (options.get(k) or {} for k in ('network_kwargs', 'loss_kwargs', 'dataset_kwargs', 'optimizer_kwargs'))
    duration = f'{options["total_iters"]} steps' if options.get('total_iters') else (f'{options["total_kimg"]} kimg' if 'total_kimg' in options else None)
    items = [
        ('loss', _short_class(loss.get('class_name'))),
        ('sigma_tn', loss.get('sigma_tn')),
        ('ambient split', loss.get('split')),
        ('network', ' '.join(str(x) for x in [_short_class(net.get('class_name')), net.get('model_type'),
                                            f'channels {net.get("model_channels")} x {net.get("channel_mult")}'
                                            if net.get('model_channels') else None] if x)),
        ('dataset', f'{data.get("path")} ({data.get("max_size")} images, {data.get("resolution")}px)' if data.get('path') else None),
        ('batch', options.get('batch_size')),
        ('optimizer', f'{_short_class(opt.get("class_name"))} lr={opt.get("lr")}' if opt else None),
        ('duration', duration),
        ('EMA half-life (kimg)', options.get('ema_halflife_kimg')),
        ('augment p', (options.get('augment_kwargs') or {}).get('p')),
        ('seed', options.get('seed')),
        ('loggers', ', '.join(options['loggers']) if options.get('loggers') else None),
    ]
    return [(k, v) for k, v in items if v not in (None, '')]

def _last(rows, name):
    xs, ys = series(rows, name)
    return ys[-1] if ys else None

def _run_table(runs):
    out = ['<table><tr><th>run</th><th>loss</th><th>sigma_tn</th><th>kimg</th><th>ticks</th>'
           '<th>last loss</th><th>last loss &lt; sigma_tn</th><th>last loss &ge; sigma_tn</th><th>training time</th></tr>']
    for run in runs:
        loss = run.options.get('loss_kwargs') or {}
        secs = _last(run.stats, 'Timing/total_sec')
        out.append('<tr>' + ''.join([
            f'<td><a href="#{_esc(_anchor(run))}">{_esc(run.name)}</a></td>',
            f'<td>{_esc(_short_class(loss.get("class_name")))}</td>',
            f'<td class="num">{_fmt(loss.get("sigma_tn"))}</td>',
            f'<td class="num">{_fmt(_last(run.stats, "Progress/kimg"))}</td>',
            f'<td class="num">{len(run.stats)}</td>',
            f'<td class="num">{_fmt(_last(run.stats, "Loss/loss"))}</td>',
            f'<td class="num">{_fmt(_last(run.stats, REGIME_STATS[0][0]))}</td>',
            f'<td class="num">{_fmt(_last(run.stats, REGIME_STATS[1][0]))}</td>',
            f'<td class="num">{_esc(dnnlib.util.format_time(secs)) if secs is not None else ""}</td>',
        ]) + '</tr>')
    out.append('</table>')
    return '\n'.join(out)

def _anchor(run):
    return 'run-' + ''.join(ch if ch.isalnum() or ch in '-_.' else '-' for ch in run.name)

def _snapshot_html(snap):
    parts = [f'<h4>snapshot at kimg {snap.kimg}</h4>']
    cells = []
    if snap.metrics:
        m = snap.metrics
        cells += [('samples', m.get('num_samples')), ('memorized fraction (ratio test)', m.get('ratio_fraction')),
                  ('mean similarity to nearest training image', m.get('similarity_mean')),
                  ('detector', (m.get('detector') or {}).get('name'))]
    for key, value in sorted((snap.quality or {}).items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            cells.append((key, value))
    if cells:
        parts.append('<table>' + ''.join(f'<tr><th>{_esc(k)}</th><td class="num">{_fmt(v)}</td></tr>'
                                         for k, v in cells if v is not None) + '</table>')
    for key, caption, css in [('grid', 'samples (grid.png)', 'grid'),
                              ('nearest', 'samples beside their nearest training images (nearest.png)', None),
                              ('histogram', 'similarity to the nearest training image (histogram.png)', None)]:
        if snap[key]:
            parts.append(f'<figure>{_img(snap[key], caption, css)}<figcaption>{_esc(caption)}</figcaption></figure>')
    return '\n'.join(parts)

def _run_html(run):
    parts = [f'<h3 id="{_esc(_anchor(run))}">{_esc(run.name)}</h3>', f'<p class="note"><code>{_esc(run.path)}</code></p>']
    summary = options_summary(run.options)
    if summary:
        parts.append('<table>' + ''.join(f'<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>' for k, v in summary) + '</table>')
    else:
        parts.append('<p class="note">No training_options.json.</p>')
    if run.evals:
        parts += [_snapshot_html(snap) for snap in run.evals]
    else:
        parts.append('<p class="note">No evaluated snapshots (sample grids and memorization appear here when '
                     '<code>python -m ambient.sweep</code> evaluated this run).</p>')
    return '\n'.join(parts)

def build_page(runs, sweeps, figures, title):
    """The HTML text: figures is {name: png path or None} of the drawn figures."""
    body = [f'<h1>{_esc(title)}</h1>',
            f'<p class="note">{len(runs)} run{"s" if len(runs) != 1 else ""}. Curves come from each run\'s '
            '<code>stats.jsonl</code> (one point per tick, x: thousands of training images seen).</p>',
            '<h2>Runs</h2>', _run_table(runs), '<h2>Loss curves</h2>']
    body.append(_img(figures['loss'], 'training loss against kimg') if figures.get('loss') else
                '<p class="note">No loss values yet.</p>')
    if figures.get('regimes'):
        body += ['<h2>Ambient regimes</h2>',
                 '<p>The ambient loss split by noise level: below sigma_tn the network learns the clean images; '
                 'above it, only the fixed noisy copies. The right panel is the share of items in the noisy regime.</p>',
                 _img(figures['regimes'], 'ambient loss per regime against kimg')]
    if figures.get('evaluations'):
        body += ['<h2>Memorization and quality along training</h2>',
                 _img(figures['evaluations'], 'memorization and quality against kimg')]
    for sweep in sweeps:
        shown = [(n, os.path.join(sweep, n)) for n in ('pareto.png', 'curves.png') if os.path.isfile(os.path.join(sweep, n))]
        if shown:
            body.append(f'<h2>Sweep figures: <code>{_esc(sweep)}</code></h2>')
            body += [f'<figure>{_img(p, n)}<figcaption>{_esc(n)}</figcaption></figure>' for n, p in shown]
    body.append('<h2>Each run</h2>')
    body += [_run_html(run) for run in runs]
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<title>{_esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n' + '\n'.join(body) + '\n</body>\n</html>\n')

def write_report(paths, dest, title=None):
    """Write dest/index.html and its figures for the runs and sweeps in `paths`; returns the page's path."""
    run_dirs, sweeps = find_runs(paths)
    runs = [load_run(d) for d in run_dirs]
    os.makedirs(dest, exist_ok=True)
    figures = {}
    for name, plot in [('loss', plot_loss), ('regimes', plot_regimes), ('evaluations', plot_evaluations)]:
        path = os.path.join(dest, f'{name}.png')
        figures[name] = path if plot(runs, path) else None
    page = build_page(runs, sweeps, figures, title or 'Training runs')
    index = os.path.join(dest, 'index.html')
    dnnlib.util.atomic_write_bytes(index, page.encode('utf8'))
    return index
