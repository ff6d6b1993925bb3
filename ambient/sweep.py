"""Train EDM and ambient models over a list of sigma_tn, then measure quality and memorization along training.

Every stage runs one of the project's CLIs as a subprocess (dataset_tool.py, train.py, generate.py,
`python -m ambient.memorization`), or the in-process quality metric, and is skipped when its output
exists; an output made with other options (training subset, train.py options, --samples, --steps,
--detector) is refused rather than reused. Outputs appear atomically (temporary name, then rename), so a sweep killed at any point resumes
where it stopped; a half-trained model resumes from its latest training state (train.py --resume).
"""

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import click
import numpy as np

import dnnlib
from ambient import pareto, quality

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Options of train.py that the sweep sets itself for every run.
MANAGED_TRAIN_OPTS = ('outdir', 'data', 'loss', 'sigma_tn', 'resume', 'nosubdir')

DEFAULTS = dict(
    source=None, subset=None, data_seed=0, resolution=None, data=None, heldout=None,
    sigma_tn=(0.0, 0.5, 1.0), every=0, samples=128, steps=18, gen_batch=64, seed=0,
    detector='pixel', gpus=None, download=False, train_opts=(),
)

# The offline demo: scikit-learn's real 8x8 digits, 100 training images, three models, about 3 minutes of
# training each on 2 CPU cores (batch 64: 1200 iterations = 76.8 kimg = 768 epochs), a snapshot every
# 16 kimg (160 epochs) evaluated with 128 samples. An 8x8 SongUNet of about 1M parameters (32 channels,
# [1, 2] multipliers, 2 blocks, attention at 4x4) without learning-rate ramp-up: EDM's 10 Mimg ramp-up
# would keep the rate near zero for such a short run.
PRESETS = {
    'demo': dict(
        source='digits', subset=100, data_seed=0, sigma_tn=(0.0, 0.5, 1.0), every=1, samples=128, steps=18,
        train_opts=('--arch=ddpmpp', '--precond=edm', '--cbase=32', '--cres=1,2', '--blocks=2', '--attn=4',
                    '--dropout=0', '--augment=0', '--batch=64', '--lr=1e-3', '--lr_rampup=0', '--iters=1200',
                    '--tick=4', '--snap=4', '--dump=8'),
    ),
}

#----------------------------------------------------------------------------
# Small helpers.

def _fmt(v):
    return f'{float(v):g}'


def _write_json(path, obj):
    dnnlib.util.atomic_write_bytes(path, (json.dumps(obj, indent=2) + '\n').encode())


def _read_json(path):
    with open(path, 'rb') as f:
        return json.load(f)


def _tmp(path):
    return f'{path}.tmp-{os.getpid()}'


def _clear_stale(path):
    """Remove leftovers of a killed attempt at producing path (its temporary siblings)."""
    for stale in glob.glob(glob.escape(path) + '.tmp-*'):
        if os.path.isdir(stale):
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.remove(stale)


def _opt_name(arg):
    m = re.match(r'--([A-Za-z0-9_-]+)', arg)
    return m.group(1).replace('-', '_') if m else None


def check_train_opts(opts):
    """Reject train.py options the sweep sets itself."""
    for arg in opts:
        if _opt_name(arg) in MANAGED_TRAIN_OPTS:
            raise dnnlib.util.UserError(f'{arg.split("=")[0]} is set by the sweep for every run; do not pass it to train.py')


def launcher(cfg, script=None, module=None):
    """argv prefix running a script or module: torchrun with --gpus, else this Python."""
    target = [script] if script else ['-m', module]
    if cfg.gpus:
        return ['torchrun', '--standalone', f'--nproc_per_node={cfg.gpus}', *target]
    return [sys.executable, *target]


def default_tools(cfg):
    """argv prefixes of the stage CLIs."""
    return dict(
        dataset_tool=[sys.executable, os.path.join(ROOT, 'dataset_tool.py'), 'convert'],
        train=launcher(cfg, script=os.path.join(ROOT, 'train.py')),
        generate=launcher(cfg, script=os.path.join(ROOT, 'generate.py')),
        memorization=launcher(cfg, module='ambient.memorization') + ['calc'],
    )


class Runner:
    """Runs (or, dry, prints) stage commands from the project root."""

    def __init__(self, dry_run=False):
        self.dry_run = dry_run

    def __call__(self, argv, what):
        print(f'[{what}] {shlex.join(argv)}', flush=True)
        if self.dry_run:
            return
        env = dict(os.environ)
        env['PYTHONPATH'] = os.pathsep.join([ROOT] + [p for p in [env.get('PYTHONPATH')] if p])
        rc = subprocess.run(argv, cwd=ROOT, env=env, check=False).returncode
        if rc != 0:
            raise dnnlib.util.UserError(f'{what} failed with exit status {rc}: {shlex.join(argv)}')

    def mkdir(self, path):
        """Create a folder (not when dry)."""
        if not self.dry_run:
            os.makedirs(path, exist_ok=True)

#----------------------------------------------------------------------------
# Data.

def check_subset(path, subset, data_seed):
    """Refuse a training subset left by an earlier sweep with another --subset or --data-seed."""
    meta = quality.read_dataset_json(path)
    found = (len(meta.get('source_indices') or []), meta.get('subset_seed'))
    if found != (subset, data_seed):
        raise dnnlib.util.UserError(f'{path} holds a subset of {found[0]} images with seed {found[1]}, not '
                                    f'--subset={subset} --data-seed={data_seed}; use another --outdir or delete it')


def prepare_data(cfg, tools, run):
    """Training zip, and held-out real images with labels for the quality metric: EasyDict of paths."""
    d = dnnlib.EasyDict(train=cfg.data, heldout=cfg.heldout, full=None, name=None)
    if cfg.source is not None:
        folder = os.path.join(cfg.outdir, 'data')
        run.mkdir(folder)
        res = [f'--resolution={cfg.resolution}'] if cfg.resolution else []
        d.train = os.path.join(folder, 'train.zip')
        d.full = os.path.join(folder, 'full.zip')
        d.heldout = os.path.join(folder, 'heldout.zip')
        d.name = os.path.basename(os.path.normpath(cfg.source)).split('.')[0]
        if os.path.isfile(d.train):
            check_subset(d.train, cfg.subset, cfg.data_seed)
        for dest, extra in [(d.train, [f'--subset={cfg.subset}', f'--seed={cfg.data_seed}']), (d.full, [])]:
            if not os.path.isfile(dest):
                _clear_stale(dest)
                run(tools['dataset_tool'] + [f'--source={cfg.source}', f'--dest={dest}', *extra, *res], 'data')
        if not os.path.isfile(d.heldout) and not run.dry_run:
            images, labels = quality.heldout_split(d.train, d.full)
            quality.write_image_zip(images, labels, d.heldout)
    elif d.heldout is not None:
        d.name = os.path.basename(os.path.normpath(d.heldout)).split('.')[0]
    return d

#----------------------------------------------------------------------------
# Training.

def run_dir(cfg, sigma_tn):
    """Training run directory of one sigma_tn."""
    return os.path.join(cfg.outdir, 'runs', f'sigma_tn-{_fmt(sigma_tn)}')


def train_argv(cfg, data_path, sigma_tn, outdir):
    """train.py arguments of one model (without --resume)."""
    loss = ['--loss=edm'] if sigma_tn == 0 else ['--loss=ambient', f'--sigma_tn={_fmt(sigma_tn)}']
    return [f'--outdir={outdir}', f'--data={data_path}', '--nosubdir', *loss, f'--seed={cfg.seed}', *cfg.train_opts]


def _kimg_of(path):
    return int(re.search(r'-(\d+)\.\w+$', path).group(1))


def latest_state(outdir):
    """The newest training-state-NNNNNN.pt in outdir, or None."""
    states = glob.glob(os.path.join(glob.escape(outdir), 'training-state-*.pt'))
    return max(states, key=_kimg_of) if states else None


def train_model(cfg, tools, run, data_path, sigma_tn):
    """Train one model to completion (resuming a half-finished run); skipped when done with the same options."""
    outdir = run_dir(cfg, sigma_tn)
    done_path = os.path.join(outdir, 'sweep-train-done.json')
    argv = train_argv(cfg, data_path, sigma_tn, outdir)
    if os.path.isfile(done_path):
        if _read_json(done_path)['argv'] != argv:
            raise dnnlib.util.UserError(f'{outdir} was trained with other options; use another --outdir or delete it')
        return
    run.mkdir(outdir)
    state = latest_state(outdir)
    resume = [f'--resume={state}'] if state else []
    start = time.time()
    run(tools['train'] + argv + resume, f'train sigma_tn={_fmt(sigma_tn)}')
    if not run.dry_run:
        _write_json(done_path, dict(argv=argv, resumed_from=state, seconds=time.time() - start))


def list_snapshots(outdir):
    """[(kimg, path)] of the network snapshots in a run directory, by kimg; the untrained kimg-0 one excluded.

    The .safetensors twin of a pickle is preferred: loading it runs no code from the file.
    """
    snaps = glob.glob(os.path.join(glob.escape(outdir), 'network-snapshot-*.pkl'))
    twin = lambda p: p[:-len('.pkl')] + '.safetensors'
    return sorted((_kimg_of(p), twin(p) if os.path.isfile(twin(p)) else p) for p in snaps if _kimg_of(p) > 0)


def choose_snapshots(snaps, every):
    """Every `every`-th snapshot counting back from the final one (which is always kept); every=0: the final only."""
    if not snaps:
        return []
    if every <= 0:
        return snaps[-1:]
    return snaps[::-1][::every][::-1]


def snapshot_progress(outdir, kimg, num_train):
    """Training progress of snapshot kimg: nimg, iterations and epochs (exact from stats.jsonl when it has it)."""
    nimg = kimg * 1000
    stats = os.path.join(outdir, 'stats.jsonl')
    if os.path.isfile(stats):
        with open(stats, 'r', encoding='utf8') as f:
            for line in f:
                try:
                    k = json.loads(line)['Progress/kimg']['mean']
                except (ValueError, KeyError, TypeError):
                    continue
                if int(k) == kimg:
                    nimg = int(round(k * 1000))
    batch = None
    options = os.path.join(outdir, 'training_options.json')
    if os.path.isfile(options):
        batch = _read_json(options).get('batch_size')
    return dict(kimg=nimg / 1000, nimg=nimg, iters=None if not batch else int(round(nimg / batch)),
                epochs=nimg / num_train if num_train else None)

#----------------------------------------------------------------------------
# Evaluation of one snapshot.

def eval_dir(cfg, sigma_tn, kimg):
    """Evaluation folder of one snapshot."""
    return os.path.join(cfg.outdir, 'evals', f'sigma_tn-{_fmt(sigma_tn)}', f'snapshot-{kimg:06d}')


def generate_samples(cfg, tools, run, snapshot, folder):
    """samples/ (one PNG per seed 0..N-1, EMA weights) and grid.png of a snapshot."""
    samples, grid = os.path.join(folder, 'samples'), os.path.join(folder, 'grid.png')
    options_path = os.path.join(folder, 'sampling.json')
    options = dict(samples=cfg.samples, steps=cfg.steps)
    if os.path.isdir(samples) and os.path.isfile(grid):
        # Reuse only samples drawn with the options the report will state.
        found = _read_json(options_path) if os.path.isfile(options_path) else dict(samples=len(os.listdir(samples)),
                                                                                    steps=cfg.steps)
        if found != options:
            raise dnnlib.util.UserError(f'{samples} holds {found["samples"]} samples of {found["steps"]} steps, not '
                                        f'{cfg.samples} of {cfg.steps}; use another --outdir or delete it')
        return samples
    run.mkdir(folder)
    _clear_stale(samples)
    _clear_stale(grid)
    tmp, tmp_grid = _tmp(samples), _tmp(grid) + '.png'
    run(tools['generate'] + [f'--network={snapshot}', f'--outdir={tmp}', f'--seeds=0-{cfg.samples - 1}',
                             f'--batch={cfg.gen_batch}', f'--steps={cfg.steps}', f'--grid={tmp_grid}'], 'generate')
    if not run.dry_run:
        # The options go first: once samples/ and grid.png are in place, sampling.json describes them.
        _write_json(options_path, options)
        os.replace(tmp_grid, grid)
        if os.path.isdir(samples):
            shutil.rmtree(samples)
        os.replace(tmp, samples)
    return samples


def measure_memorization(cfg, tools, run, images, train_path, dest, reference=None):
    """memorization/ (metrics.json, neighbors.csv, histogram.png, nearest.png) of a folder of images."""
    metrics = os.path.join(dest, 'metrics.json')
    if os.path.isfile(metrics):
        found = (_read_json(metrics).get('detector') or {}).get('name')
        if found != cfg.detector:
            raise dnnlib.util.UserError(f'{dest} was measured with --detector={found}, not {cfg.detector}; '
                                        'use another --outdir or delete it')
        return
    _clear_stale(dest)
    tmp = _tmp(dest)
    ref = [f'--reference={reference}'] if reference else []
    run(tools['memorization'] + [f'--images={images}', f'--data={train_path}', f'--detector={cfg.detector}',
                                 f'--dest={tmp}', f'--cache-dir={os.path.join(cfg.outdir, "cache")}', *ref],
        'memorization')
    if not run.dry_run:
        if os.path.isdir(dest):
            shutil.rmtree(dest)
        os.replace(tmp, dest)


def measure_quality(cfg, data, samples, dest, heldout):
    """quality.json: FD_<name> (and FID / FD_DINOv2 where available) of the samples against held-out images."""
    if os.path.isfile(dest) or heldout is None:
        return
    images = quality.load_images(samples)
    result = quality.evaluate(images, heldout[0], heldout[1], data.name, cache_dir=os.path.join(cfg.outdir, 'cache'),
                              detectors=True, allow_download=cfg.download)
    _write_json(dest, result)

#----------------------------------------------------------------------------
# Results.

def _rel(cfg, path):
    return os.path.relpath(path, cfg.outdir)


def collect_row(cfg, sigma_tn, kimg, num_train, quality_name):
    """One table row (dict) of a fully evaluated snapshot."""
    folder = eval_dir(cfg, sigma_tn, kimg)
    mem = _read_json(os.path.join(folder, 'memorization', 'metrics.json'))
    row = dict(sigma_tn=float(sigma_tn), loss='edm' if sigma_tn == 0 else 'ambient',
               **snapshot_progress(run_dir(cfg, sigma_tn), kimg, num_train),
               ratio_fraction=mem['ratio_fraction'], fraction_above=mem['fraction_above'],
               similarity_mean=mem['similarity_mean'], num_samples=mem['num_samples'],
               grid=_rel(cfg, os.path.join(folder, 'grid.png')),
               nearest=_rel(cfg, os.path.join(folder, 'memorization', 'nearest.png')))
    qpath = os.path.join(folder, 'quality.json')
    row['quality'] = _read_json(qpath) if os.path.isfile(qpath) else None
    row['fd'] = row['quality'][f'FD_{quality_name}'] if row['quality'] else None
    return row


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
        cells = [_fmt(r['sigma_tn']) + (' (EDM)' if r['sigma_tn'] == 0 else ''), f'{r["kimg"]:.1f}',
                 '-' if r['iters'] is None else str(r['iters']), _num(r['epochs'], 0), _num(r['fd']),
                 _pct(r['ratio_fraction']), *[_pct(r['fraction_above'].get(t)) for t in thresholds],
                 _num(r['similarity_mean'], 3)]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def write_results(cfg, summary):
    """sweep.json, sweep.md, pareto.png, curves.png and report.md in the output folder."""
    rows, label = summary['rows'], summary['quality_metric']
    _write_json(os.path.join(cfg.outdir, 'sweep.json'), summary)
    thresholds = list(rows[0]['fraction_above']) if rows else []
    group_label = lambda g: 'EDM (sigma_tn=0)' if g == 0 else f'ambient sigma_tn={_fmt(g)}'
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
             f'Models: sigma_tn in {{{", ".join(_fmt(s) for s in summary["sigma_tn"])}}} (0 = EDM baseline, '
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
        lines.append(f'| {_fmt(s)} | {r["kimg"]:.1f} | {_num(r["epochs"], 0)} | {_num(r["fd"])} | '
                     f'{_pct(r["ratio_fraction"])} | {_num(r["similarity_mean"], 3)} |')
    lines += ['', f'Each fraction is over {cfg.samples} samples, so one sample is {_pct(1 / cfg.samples)} of it.']
    front = summary.get('pareto_front', [])
    if front:
        pts = ', '.join(f'sigma_tn={_fmt(rows[i]["sigma_tn"])} at {rows[i]["epochs"]:.0f} epochs '
                        f'({label} {rows[i]["fd"]:.2f}, {_pct(rows[i]["ratio_fraction"])})' for i in front)
        lines += ['', f'Pareto frontier over all evaluated snapshots (minimising both {label} and the memorized '
                  f'fraction): {pts}.']
    lines += ['', 'Every row of `sweep.md` is one evaluated snapshot. Figures: `pareto.png` (quality vs memorized '
              'fraction, one line per sigma_tn along training, dashed: Pareto frontier), `curves.png` (metrics vs '
              'epochs). Samples and their nearest training images of the final snapshots:', '']
    for s, r in sorted(final.items()):
        lines.append(f'- sigma_tn={_fmt(s)}: samples `{r["grid"]}`, nearest neighbours `{r["nearest"]}`')
    lines += ['', f'This invocation ran for {summary["seconds"] / 60:.1f} minutes (stages finished by an earlier '
              'invocation were skipped and are not counted).', '']
    return '\n'.join(lines)

#----------------------------------------------------------------------------

def run_sweep(cfg, tools=None, dry_run=False):
    """Run every stage of the sweep (skipping finished ones) and write the results; returns the summary dict."""
    start = time.time()
    tools = tools or default_tools(cfg)
    run = Runner(dry_run)
    run.mkdir(cfg.outdir)
    data = prepare_data(cfg, tools, run)
    if data.train is None:
        raise dnnlib.util.UserError('Give --data=ZIP, or --source (with --subset) to build it')
    notes = []
    heldout = None
    if data.heldout is None:
        notes.append('Quality skipped: no held-out real images (give --heldout, or --source to derive them).')
    elif not dry_run:
        heldout = quality.load_images(data.heldout, with_labels=True)
        if heldout[1] is None:
            raise dnnlib.util.UserError(f'{data.heldout} has no class labels; the quality classifier needs them')
    num_train = None if dry_run else len(quality.load_images(data.train))
    baseline = None
    if data.heldout is not None:
        base_dir = os.path.join(cfg.outdir, 'evals', 'heldout-baseline')
        measure_memorization(cfg, tools, run, data.heldout, data.train, base_dir)
        if not dry_run:
            baseline = _read_json(os.path.join(base_dir, 'metrics.json'))

    rows = []
    for sigma_tn in cfg.sigma_tn:
        train_model(cfg, tools, run, data.train, sigma_tn)
        snaps = choose_snapshots(list_snapshots(run_dir(cfg, sigma_tn)), cfg.every)
        if dry_run and not snaps:
            snaps = [(0, os.path.join(run_dir(cfg, sigma_tn), 'network-snapshot-<kimg>.pkl'))]
        elif not snaps:
            notes.append(f'sigma_tn={_fmt(sigma_tn)}: no snapshot past kimg 0 to evaluate (train for at least 1 kimg).')
        for kimg, snapshot in snaps:
            folder = eval_dir(cfg, sigma_tn, kimg)
            samples = generate_samples(cfg, tools, run, snapshot, folder)
            measure_memorization(cfg, tools, run, samples, data.train, os.path.join(folder, 'memorization'))
            if dry_run:
                continue
            measure_quality(cfg, data, samples, os.path.join(folder, 'quality.json'), heldout)
            rows.append(collect_row(cfg, sigma_tn, kimg, num_train, data.name))
    if dry_run:
        return None

    label = f'FD_{data.name}' if heldout is not None else None
    for r in rows:
        notes += [n for n in (r['quality'] or {}).get('notes', []) if n not in notes]
    ok = [i for i, r in enumerate(rows) if r['fd'] is not None]
    front = [ok[i] for i in pareto.pareto_front([rows[i]['fd'] for i in ok], [rows[i]['ratio_fraction'] for i in ok])]
    summary = dict(data=dict(train=_rel(cfg, data.train) if data.train.startswith(cfg.outdir) else data.train,
                             heldout=data.heldout, num_train=num_train),
                   sigma_tn=[float(s) for s in cfg.sigma_tn], train_opts=list(cfg.train_opts), samples=cfg.samples,
                   steps=cfg.steps, detector=cfg.detector, quality_metric=label, baseline=baseline,
                   rows=rows, pareto_front=front, notes=notes, seconds=time.time() - start)
    write_results(cfg, summary)
    print(f'Wrote {os.path.join(cfg.outdir, "sweep.md")} and report.md, pareto.png, curves.png')
    return summary

#----------------------------------------------------------------------------

def parse_float_list(text):
    """'0,0.5,1' -> (0.0, 0.5, 1.0)."""
    try:
        values = tuple(float(x) for x in str(text).split(',') if x.strip() != '')
    except ValueError:
        raise dnnlib.util.UserError(f'Cannot parse {text!r} as a comma-separated list of numbers') from None
    if not values or any(v < 0 or not np.isfinite(v) for v in values):
        raise dnnlib.util.UserError(f'sigma_tn values must be finite and >= 0, got {text!r}')
    return values


def make_config(outdir, preset=None, **options):
    """The sweep's configuration: DEFAULTS, then the preset, then the options given (None = not given)."""
    cfg = dnnlib.EasyDict(DEFAULTS)
    if preset is not None:
        if preset not in PRESETS:
            raise dnnlib.util.UserError(f'Unknown preset {preset!r}; choose {"|".join(PRESETS)}')
        cfg.update(PRESETS[preset])
    extra_opts = tuple(options.pop('train_opts', None) or ())
    cfg.update({k: v for k, v in options.items() if v is not None})
    cfg.train_opts = tuple(cfg.train_opts) + extra_opts # Later options win in train.py's parser.
    cfg.outdir = os.path.abspath(outdir)
    if isinstance(cfg.sigma_tn, str):
        cfg.sigma_tn = parse_float_list(cfg.sigma_tn)
    check_train_opts(cfg.train_opts)
    for key in ('data', 'heldout'):
        if cfg[key] is not None:
            cfg[key] = os.path.abspath(cfg[key])
            if not os.path.exists(cfg[key]):
                raise dnnlib.util.UserError(f'--{key} {cfg[key]} does not exist')
    if cfg.source is not None and cfg.data is not None:
        raise dnnlib.util.UserError('Give either --source (the sweep builds the training subset) or --data, not both')
    if cfg.source is not None and cfg.subset is None:
        raise dnnlib.util.UserError('--source needs --subset=N (the held-out images are the rest of the source)')
    if cfg.source is not None and cfg.source != 'digits':
        cfg.source = os.path.abspath(cfg.source)
    if cfg.samples < 2:
        raise dnnlib.util.UserError('--samples must be at least 2')
    return cfg


@click.command(context_settings=dict(show_default=True))
@click.option('--outdir', help='Where everything goes', metavar='DIR', type=str, required=True)
@click.option('--preset', help='Start from a preset configuration', type=click.Choice(sorted(PRESETS)))
@click.option('--source', help='Build the training subset from this dataset_tool.py source ("digits", a tarball, ...)', metavar='SRC', type=str)
@click.option('--subset', help='Training images drawn from --source', metavar='INT', type=click.IntRange(min=1))
@click.option('--data-seed', 'data_seed', help='Seed of the subset  [default: 0]', metavar='INT', type=int)
@click.option('--resolution', help='Resize the source (dataset_tool.py --resolution)', metavar='WxH', type=str)
@click.option('--data', help='An existing training zip instead of --source', metavar='ZIP', type=str)
@click.option('--heldout', help='Labelled held-out real images for the quality metric (with --data)', metavar='ZIP', type=str)
@click.option('--sigma_tn', help='Comma-separated sigma_tn values; 0 = EDM  [default: 0,0.5,1]', metavar='LIST', type=str)
@click.option('--every', help='Evaluate every k-th snapshot back from the final one; 0 = final only  [default: 0]', metavar='INT', type=click.IntRange(min=0))
@click.option('--samples', help='Samples per evaluated snapshot  [default: 128]', metavar='INT', type=int)
@click.option('--steps', help='Sampler steps  [default: 18]', metavar='INT', type=click.IntRange(min=1))
@click.option('--seed', help='Training seed  [default: 0]', metavar='INT', type=int)
@click.option('--detector', help='Memorization feature space  [default: pixel]', type=click.Choice(['pixel', 'dinov2', 'inception']))
@click.option('--gpus', help='Launch stages with torchrun on this many GPUs', metavar='INT', type=click.IntRange(min=1))
@click.option('--download', help='Allow downloading FID / FD_DINOv2 detector weights', is_flag=True, default=None)
@click.option('--train-opt', 'train_opts', help='Extra train.py option (repeatable); also: anything after --', metavar='OPT', multiple=True)
@click.option('--dry-run', help='Print the commands instead of running them', is_flag=True)
@click.argument('extra_train_opts', nargs=-1, type=click.UNPROCESSED)
def main(outdir, dry_run, train_opts, extra_train_opts, **options):
    """Train a model per sigma_tn, then measure quality and memorization of its snapshots.

    \b
    # The offline demo on scikit-learn's digits (about 8-10 minutes on 2 CPU cores)
    python -m ambient.sweep --preset demo --outdir demo-out
    \b
    # CIFAR-10, 1000 images, four GPUs, paper's hyper-parameters passed to train.py
    python -m ambient.sweep --outdir sweep-c10 --source cifar-10-python.tar.gz --subset 1000 \\
        --sigma_tn 0,0.5,1 --every 5 --samples 10000 --detector dinov2 --gpus 4 -- --batch=256 --lr=1e-4
    """
    cfg = make_config(outdir, train_opts=tuple(train_opts) + tuple(extra_train_opts), **options)
    run_sweep(cfg, dry_run=dry_run)


if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
