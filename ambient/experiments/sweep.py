"""Train EDM and ambient models over a list of sigma_tn, then measure quality and memorization along training.

Every stage (ambient/experiments/sweep_stages.py) runs one of the project's CLIs as a subprocess or the in-process
quality metric, and is skipped when its output exists; an output made with other options (training subset,
train.py options, --samples, --steps, --detector) is refused rather than reused. Outputs appear atomically
(temporary name, then rename), so a sweep killed at any point resumes where it stopped; a half-trained model
resumes from its latest training state (train.py --resume). The reports are written by ambient/experiments/sweep_report.py.
"""

import concurrent.futures
import itertools
import os
import threading
import time

import numpy as np

import dnnlib
from ambient.experiments import pareto, sweep_methods
from ambient.experiments.sweep_report import write_results
from ambient.experiments.sweep_stages import (fmt_number, read_json, rel_path, check_train_opts, choose_snapshots, collect_row, default_tools,
                                              eval_dir, generate_samples, list_snapshots, make_figures, measure_memorization,
                                              measure_quality, measure_reference_quality, prepare_data, run_dir, Runner, stage_threads, train_model,
                                              write_json)
from ambient.metrics import thresholds as ambient_thresholds
from ambient.metrics.heldout import load_labelled
from torch_utils import cpu_features
from training.dataset import ImageFolderDataset, load_images

DEFAULTS = dict(
    source=None, subset=None, data_seed=0, balanced=False, resolution=None, data=None, heldout=None,
    sigma_tn=(0.0, 0.5, 1.0), every=0, samples=128, steps=18, gen_batch=64, seeds=(0,),
    detector='pixel', gpus=None, download=False, train_opts=(), ambient_opts=(), jobs=1, methods=None,
    thresholds_preset=None, arithmetic=None,
)

# The offline demo: scikit-learn's real 8x8 digits, 100 training images; EDM and the ambient method at
# sigma_tn=0.5 with the uniform split (--ambient_split=uniform, the paper's Algorithm 1: a fair coin per item
# picks the clean or the noisy regime, see docs/ambient.md), three training seeds each, two models at a time on 2 CPU cores. A small
# 8x8 SongUNet (16 channels, [1, 2] multipliers, 2 blocks, attention at 4x4) without learning-rate ramp-up
# (EDM's 10 Mimg ramp-up would keep the rate near zero for such a short run), 1800 iterations at batch 64
# (115 kimg, 1152 epochs), snapshots at 64 kimg and at the end, each evaluated with 2048 samples. The settings come from
# the search recorded in docs/results.md: at this length EDM has started copying, the ambient models much less.
# The CIFAR-10 presets read the project's 2000-image CIFAR-10 sample (../shared/data/cifar10-mini, the official
# tarball's format); --source=cifar-10-python.tar.gz gives the real one (held out: every image not in the subset).
CIFAR_MINI = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', '..', 'shared',
                                           'data', 'cifar10-mini', 'cifar-10-python.tar.gz'))

# CIFAR-10 in miniature (docs/results.md, "CIFAR-10"): 100 class-balanced training images downsampled to 16x16, a
# small DDPM++ (32 channels, [1, 2] multipliers, 2 blocks, attention at 8x8), no dropout or augmentation, Adam at
# 2e-3 without ramp-up, 2400 iterations at batch 64 (154 kimg, 1536 epochs): at this length EDM copies a third of
# its samples or more. Arithmetic: bfloat16 with NHWC activations on a CPU with AMX (measured 1.6-1.9x float32 for this
# network), float32 elsewhere; see FAST_OPTS.
CIFAR_TRAIN = ('--arch=ddpmpp', '--precond=edm', '--cbase=32', '--cres=1,2', '--blocks=2', '--attn=8', '--dropout=0',
               '--augment=0', '--batch=64', '--lr=2e-3', '--lr_rampup=0', '--iters=2400', '--tick=8', '--snap=4', '--dump=4')
CIFAR_SIGMA_TN = 0.45 # The best trade-off of the search (docs/results.md); cifar-table2 adds 0.3 and 0.6.
CIFAR = dict(source=CIFAR_MINI, subset=100, balanced=True, resolution='16x16', data_seed=0, every=2, samples=1024,
             steps=18, gen_batch=256, jobs=2, ambient_opts=('--ambient_split=uniform',), train_opts=CIFAR_TRAIN,
             arithmetic='auto')

# A preset with arithmetic='auto' trains with FAST_OPTS on a CPU with AMX and in float32 elsewhere (never bfloat16 where
# the CPU lacks it). The first run of an --outdir decides and records the choice in ARITHMETIC_RECORD; later runs, on
# any machine, follow the record, so a sweep resumes with the arithmetic it started with.
FAST_OPTS = ('--bf16=1', '--channels_last=1', '--fused=1')
ARITHMETIC_RECORD = 'preset-arithmetic.json'

PRESETS = {
    'demo': dict(
        source='digits', subset=100, data_seed=0, sigma_tn=(0.0, 0.5), seeds=(0, 1, 2), every=1, samples=2048,
        steps=18, gen_batch=512, jobs=2, ambient_opts=('--ambient_split=uniform',),
        train_opts=('--arch=ddpmpp', '--precond=edm', '--cbase=16', '--cres=1,2', '--blocks=2', '--attn=4',
                    '--dropout=0', '--augment=0', '--batch=64', '--lr=1e-3', '--lr_rampup=0', '--iters=1800',
                    '--tick=8', '--snap=8', '--dump=8'),
    ),
    # Table 1 in miniature: EDM vs the best ambient setting, three training seeds (about an hour on 2 cores).
    'cifar': dict(CIFAR, methods=('edm', f'ambient:{CIFAR_SIGMA_TN:g}'), seeds=(0, 1, 2)),
    # The same, one seed (about 20 minutes); its models are the first seed of 'cifar' (same --outdir: reused).
    'cifar-quick': dict(CIFAR, methods=('edm', f'ambient:{CIFAR_SIGMA_TN:g}'), seeds=(0,)),
    # Table 2 in miniature: adds a smaller and a larger sigma_tn, masking and noisy-only training, three seeds.
    'cifar-table2': dict(CIFAR, methods=('edm', 'ambient:0.3', f'ambient:{CIFAR_SIGMA_TN:g}', 'ambient:0.6', 'masking:0.2',
                                         f'noisy_only:{CIFAR_SIGMA_TN:g}'), seeds=(0, 1, 2)),
}

#----------------------------------------------------------------------------

def model_stages(cfg, tools, run, data, heldout, num_train, sigma_tn, seed):
    """Train one (sigma_tn, seed) model and evaluate its chosen snapshots: (rows, notes, final snapshot or None)."""
    rows, notes = [], []
    train_model(cfg, tools, run, data.train, sigma_tn, seed)
    snaps = choose_snapshots(list_snapshots(run_dir(cfg, sigma_tn, seed)), cfg.every)
    if run.dry_run and not snaps:
        snaps = [(0, os.path.join(run_dir(cfg, sigma_tn, seed), 'network-snapshot-<kimg>.pkl'))]
    elif not snaps:
        notes.append(f'sigma_tn={fmt_number(sigma_tn)} seed {seed}: no snapshot past kimg 0 to evaluate '
                     '(train for at least 1 kimg).')
    for kimg, snapshot in snaps:
        folder = eval_dir(cfg, sigma_tn, seed, kimg)
        samples = generate_samples(cfg, tools, run, snapshot, folder)
        measure_memorization(cfg, tools, run, samples, data.train, os.path.join(folder, 'memorization'))
        if run.dry_run:
            continue
        measure_quality(cfg, data, samples, os.path.join(folder, 'quality.json'), heldout)
        rows.append(collect_row(cfg, sigma_tn, seed, kimg, num_train, data.name))
    return rows, notes, (snaps[-1][1] if snaps else None)


def run_sweep(cfg, tools=None, dry_run=False):
    """Run every stage of the sweep (skipping finished ones) and write the results; returns the summary dict."""
    start = time.time()
    tools = tools or default_tools(cfg)
    run = Runner(dry_run, threads=stage_threads(cfg.jobs))
    run.mkdir(cfg.outdir)
    if cfg.arithmetic is not None:
        print(f'Arithmetic: {" ".join(cfg.arithmetic[0]) or "float32 (EDM)"} ({cfg.arithmetic[1]})', flush=True)
        if not dry_run:
            record_arithmetic(cfg)
    data = prepare_data(cfg, tools, run)
    if data.train is None:
        raise dnnlib.util.UserError('Give --data=ZIP, or --source (with --subset) to build it')
    notes = []
    heldout = None
    if data.heldout is None:
        notes.append('Quality skipped: no held-out real images (give --heldout, or --source to derive them).')
    elif not dry_run:
        heldout = load_labelled(data.heldout)
        if heldout[1] is None:
            raise dnnlib.util.UserError(f'{data.heldout} has no class labels; the quality classifier needs them')
    num_train = None if dry_run else len(load_images(data.train)[0])
    baseline = None
    if data.heldout is not None:
        base_dir = os.path.join(cfg.outdir, 'evals', 'heldout-baseline')
        measure_memorization(cfg, tools, run, data.heldout, data.train, base_dir)
        if not dry_run:
            baseline = read_json(os.path.join(base_dir, 'metrics.json'))

    jobs = [(method, seed) for method, seed in itertools.product(cfg.methods, cfg.seeds)]
    failed = threading.Event() # After a failure no further model starts; those running finish, then it is raised.

    def stages(method, seed):
        if failed.is_set():
            return None
        try:
            return model_stages(cfg, tools, run, data, heldout, num_train, method, seed)
        except BaseException:
            failed.set()
            raise

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(cfg.jobs, len(jobs)))) as pool:
        futures = [pool.submit(stages, s, seed) for s, seed in jobs]
        concurrent.futures.wait(futures)
    results = [f.result() for f in futures] # Raises the first failure, in plan order.
    rows, finals = [], {}
    for (sigma_tn, seed), (model_rows, model_notes, final) in zip(jobs, results):
        rows += model_rows
        notes += model_notes
        if final is not None and seed == cfg.seeds[0]:
            finals[sigma_tn] = final
    figures = make_figures(cfg, tools, run, data.train, finals) if finals else {}
    if dry_run:
        return None

    label = f'FD_{data.name}' if heldout is not None else None
    reference = measure_reference_quality(cfg, data, heldout).get(label) if heldout is not None else None
    for r in rows:
        notes += [n for n in (r['quality'] or {}).get('notes', []) if n not in notes]
    ok = [i for i, r in enumerate(rows) if r['fd'] is not None]
    front = [ok[i] for i in pareto.pareto_front([rows[i]['fd'] for i in ok], [rows[i]['ratio_fraction'] for i in ok])]
    summary = dict(data=dict(train=rel_path(cfg, data.train) if data.train.startswith(cfg.outdir) else data.train,
                             heldout=data.heldout, num_train=num_train),
                   sigma_tn=[float(s) for s in cfg.sigma_tn], methods=list(cfg.methods), train_opts=list(cfg.train_opts),
                   ambient_opts=list(cfg.ambient_opts), thresholds_preset=cfg.thresholds_preset, samples=cfg.samples,
                   steps=cfg.steps, detector=cfg.detector, quality_metric=label, baseline=baseline,
                   training_set_quality=reference,
                   rows=rows, pareto_front=front, figures=figures, notes=notes, seconds=time.time() - start)
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
    if len(set(values)) != len(values):
        raise dnnlib.util.UserError(f'--sigma_tn {text!r} names a value twice (it would plan the same run twice)')
    return values

def parse_seeds(text):
    """'0-2' or '0,1,2' (or a mix, as generate.py's --seeds) -> (0, 1, 2); each seed once."""
    seeds = []
    try:
        for part in str(text).split(','):
            lo, _, hi = part.strip().partition('-')
            seeds += range(int(lo), int(hi or lo) + 1)
    except ValueError:
        raise dnnlib.util.UserError(f'--seeds: cannot parse {text!r}; give e.g. 0-2 or 0,3,7') from None
    if not seeds or min(seeds) < 0:
        raise dnnlib.util.UserError(f'--seeds: give one or more non-negative seeds, got {text!r}')
    if len(set(seeds)) != len(seeds):
        raise dnnlib.util.UserError(f'--seeds: {text!r} names a seed twice')
    return tuple(seeds)

def preset_arithmetic(outdir):
    """(train.py options, why) of a preset with arithmetic='auto': the --outdir's record, else this CPU's choice."""
    path = os.path.join(outdir, ARITHMETIC_RECORD)
    if os.path.isfile(path):
        try:
            opts = tuple(read_json(path)['train_opts'])
        except (OSError, ValueError, KeyError, TypeError):
            raise dnnlib.util.UserError(f'{path} is unreadable; delete it to let this CPU choose the arithmetic') from None
        return opts, f'as recorded in {ARITHMETIC_RECORD} by the first run of this --outdir'
    if cpu_features.bf16_kind() == cpu_features.AMX:
        return FAST_OPTS, 'this CPU has AMX'
    return (), f'this CPU has no AMX (bf16: {cpu_features.bf16_kind()})'

def record_arithmetic(cfg):
    """Write the --outdir's arithmetic record once (a preset with arithmetic='auto')."""
    path = os.path.join(cfg.outdir, ARITHMETIC_RECORD)
    if cfg.arithmetic is not None and not os.path.isfile(path):
        write_json(path, dict(train_opts=list(cfg.arithmetic[0]), why=cfg.arithmetic[1]))

def make_config(outdir, preset=None, **options):
    """The sweep's configuration: DEFAULTS, then the preset, then the options given (None = not given)."""
    cfg = dnnlib.EasyDict(DEFAULTS)
    if preset is not None:
        if preset not in PRESETS:
            raise dnnlib.util.UserError(f'Unknown preset {preset!r}; choose {"|".join(PRESETS)}')
        cfg.update(PRESETS[preset])
    extra_opts = tuple(options.pop('train_opts', None) or ())
    cfg.ambient_opts = tuple(cfg.ambient_opts) + tuple(options.pop('ambient_opts', None) or ())
    cfg.update({k: v for k, v in options.items() if v is not None})
    cfg.outdir = os.path.abspath(outdir)
    fast = ()
    if cfg.arithmetic == 'auto':
        cfg.arithmetic = preset_arithmetic(cfg.outdir)
        fast = cfg.arithmetic[0]
    cfg.train_opts = tuple(cfg.train_opts) + tuple(fast) + extra_opts # Later options win in train.py's parser.
    if options.get('methods') is not None and options.get('sigma_tn') is not None:
        raise dnnlib.util.UserError('Give --methods or its shorthand --sigma_tn, not both')
    if isinstance(cfg.sigma_tn, str):
        cfg.sigma_tn = parse_float_list(cfg.sigma_tn)
    if options.get('sigma_tn') is not None and options.get('methods') is None:
        cfg.methods = None # --sigma_tn replaces a preset's models.
    # The models: --methods, else --sigma_tn as its shorthand (0 -> edm, x -> ambient:x).
    cfg.methods = sweep_methods.parse_list(cfg.methods) if cfg.methods is not None else \
        tuple(sweep_methods.parse(s) for s in cfg.sigma_tn)
    if options.get('methods') is not None or (preset is not None and PRESETS[preset].get('methods')):
        cfg.sigma_tn = tuple(sweep_methods.param(m) for m in cfg.methods if sweep_methods.family(m) in ('edm', 'ambient'))
    cfg.thresholds_preset = ambient_thresholds.resolve(cfg.thresholds_preset, [cfg.source, cfg.data, cfg.heldout])[0]
    if isinstance(cfg.seeds, (str, int)):
        cfg.seeds = parse_seeds(cfg.seeds)
    check_train_opts(cfg.train_opts + cfg.ambient_opts)
    for key in ('data', 'heldout'):
        if cfg[key] is not None:
            cfg[key] = os.path.abspath(cfg[key])
            if not os.path.exists(cfg[key]):
                raise dnnlib.util.UserError(f'--{key} {cfg[key]} does not exist')
    if cfg.source is not None and cfg.data is not None:
        raise dnnlib.util.UserError('Give either --source (the sweep builds the training subset) or --data, not both')
    if cfg.source is not None and cfg.heldout is not None:
        raise dnnlib.util.UserError('--heldout applies to --data; with --source the held-out images are the rest of the source')
    for key in ('data', 'heldout'): # Opened now (also for --dry-run), not after hours of training.
        if cfg[key] is not None:
            ImageFolderDataset(path=cfg[key], use_labels=(key == 'heldout')).close()
    if cfg.source is not None and cfg.subset is None:
        raise dnnlib.util.UserError('--source needs --subset=N (the held-out images are the rest of the source)')
    if cfg.source is not None and cfg.source != 'digits':
        cfg.source = os.path.abspath(cfg.source)
        if not os.path.exists(cfg.source):
            hint = (' (the cifar presets read the project\'s CIFAR-10 sample there; give --source=cifar-10-python.tar.gz)'
                    if cfg.source == CIFAR_MINI else '')
            raise dnnlib.util.UserError(f'--source {cfg.source} does not exist{hint}')
    if cfg.samples < 2:
        raise dnnlib.util.UserError('--samples must be at least 2')
    return cfg
