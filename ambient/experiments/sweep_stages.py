"""The sweep's stages: build data, train, sample, measure memorization and quality; each skipped when its output exists.

Every stage runs one of the project's CLIs as a subprocess (dataset_tool.py, train.py, generate.py,
`python -m ambient.memorization`), or the in-process quality metric. Outputs appear atomically (temporary
name, then rename), so a sweep killed at any point resumes where it stopped.
"""

import contextlib
import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import dnnlib
from ambient.experiments import sweep_methods
from ambient.metrics import heldout as heldout_lib
from ambient.metrics import quality
from ambient.metrics import thresholds as ambient_thresholds
from torch_utils import lifetime
from training import checkpoint
from training.dataset import load_images, read_dataset_json, write_image_zip

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) # The checkout: ambient/experiments/ is two below.

#----------------------------------------------------------------------------
# Small helpers.

def fmt_number(v):
    """A number as the sweep prints it in names and tables ('0.5', '1')."""
    return f'{float(v):g}'


def write_json(path, obj):
    """Write obj as indented JSON, atomically."""
    dnnlib.util.atomic_write_bytes(path, (json.dumps(obj, indent=2) + '\n').encode())


def read_json(path):
    """The JSON object stored in path."""
    with open(path, 'rb') as f:
        return json.load(f)


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

# Options of train.py that the sweep sets itself for every run.
MANAGED_TRAIN_OPTS = ('outdir', 'data', 'loss', 'sigma_tn', 'resume', 'nosubdir', 'seed', 'noise_seed', 'mask_p', 'mask_seed')


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
        figures=[sys.executable, '-m', 'ambient.figures'],
    )

def stage_threads(jobs):
    """CPU threads per stage process when `jobs` stages run at once (None: leave torch's default)."""
    if jobs <= 1 or 'OMP_NUM_THREADS' in os.environ:
        return None
    return max(1, (os.cpu_count() or 1) // jobs)

class Runner:
    """Runs (or, dry, prints) stage commands from the project root; `threads` caps each stage's CPU threads."""

    def __init__(self, dry_run=False, threads=None):
        self.dry_run = dry_run
        self.threads = threads

    def __call__(self, argv, what):
        print(f'[{what}] {shlex.join(argv)}', flush=True)
        if self.dry_run:
            return
        env = dict(os.environ)
        env['PYTHONPATH'] = os.pathsep.join([ROOT] + [p for p in [env.get('PYTHONPATH')] if p])
        if self.threads:
            env['OMP_NUM_THREADS'] = env['MKL_NUM_THREADS'] = str(self.threads)
        # A stage dies with the sweep however the sweep ends (even SIGKILL). SIGTERM rather than SIGKILL lets torchrun
        # pass it on to its ranks; a plain Python stage dies of it at once. Same session, so Ctrl-C still reaches it.
        rc = subprocess.run(argv, cwd=ROOT, env=env, check=False,
                            preexec_fn=lifetime.preexec_die_with_parent(signal.SIGTERM)).returncode
        if rc != 0:
            raise dnnlib.util.UserError(f'{what} failed with exit status {rc}: {shlex.join(argv)}')

    def mkdir(self, path):
        """Create a folder (not when dry)."""
        if not self.dry_run:
            os.makedirs(path, exist_ok=True)

    @contextlib.contextmanager
    def output(self, path, suffix=''):
        """A temporary path for a stage's output, renamed to `path` when the stage succeeds (not when dry)."""
        if self.dry_run:
            yield f'{path}.tmp-{os.getpid()}{suffix}'
            return
        with dnnlib.util.atomic_output(path, suffix=suffix) as tmp:
            yield tmp

#----------------------------------------------------------------------------
# Data.

def check_subset(path, subset, data_seed, balanced=False):
    """Refuse a training subset left by an earlier sweep with another --subset, --data-seed or --balanced."""
    meta = read_dataset_json(path)
    found = (len(meta.get('source_indices') or []), meta.get('subset_seed'), bool(meta.get('subset_balanced')))
    if found != (subset, data_seed, bool(balanced)):
        kind = lambda b: 'class-balanced ' if b else ''
        raise dnnlib.util.UserError(f'{path} holds a {kind(found[2])}subset of {found[0]} images with seed {found[1]}, not '
                                    f'a {kind(balanced)}subset of --subset={subset} --data-seed={data_seed}; '
                                    'use another --outdir or delete it')

def data_name(source):
    """Short name of a source for labels such as FD_<name>: 'digits', 'cifar10' for any CIFAR-10 source, else its base name."""
    base = os.path.basename(os.path.normpath(source)).split('.')[0]
    return 'cifar10' if ambient_thresholds.infer_preset(source) == 'cifar10' else base

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
        d.name = data_name(cfg.source)
        if os.path.isfile(d.train):
            check_subset(d.train, cfg.subset, cfg.data_seed, cfg.balanced)
        subset = [f'--subset={cfg.subset}', f'--seed={cfg.data_seed}'] + (['--balanced'] if cfg.balanced else [])
        for dest, extra in [(d.train, subset), (d.full, [])]:
            if not os.path.isfile(dest):
                _clear_stale(dest)
                run(tools['dataset_tool'] + [f'--source={cfg.source}', f'--dest={dest}', *extra, *res], 'data')
        if not os.path.isfile(d.heldout) and not run.dry_run:
            images, labels = heldout_lib.heldout_split(d.train, d.full)
            write_image_zip(images, labels, d.heldout)
    elif d.heldout is not None:
        d.name = os.path.basename(os.path.normpath(d.heldout)).split('.')[0]
    return d

#----------------------------------------------------------------------------
# Training.

def model_name(sigma_tn, seed):
    """Folder name of one trained model: sigma_tn-X/seed-S (EDM, ambient), masking-P/seed-S, noisy_only-X/seed-S.

    sigma_tn: a method spec (ambient/sweep_methods.py) or a number (0 = EDM, else ambient), as everywhere below.
    """
    return os.path.join(sweep_methods.folder(sigma_tn), f'seed-{seed}')


def stage_label(sigma_tn):
    """'sigma_tn=X' for EDM and ambient models, the spec otherwise (in stage names)."""
    if sweep_methods.family(sigma_tn) in ('edm', 'ambient'):
        return f'sigma_tn={fmt_number(sweep_methods.param(sigma_tn))}'
    return sweep_methods.parse(sigma_tn)

def run_dir(cfg, sigma_tn, seed):
    """Training run directory of one (sigma_tn, training seed)."""
    return os.path.join(cfg.outdir, 'runs', model_name(sigma_tn, seed))

def train_argv(cfg, data_path, sigma_tn, seed, outdir):
    """train.py arguments of one model (without --resume).

    An ambient model's noisy copies are drawn with its training seed, so that repeating a setting over seeds
    also repeats the one random draw the method adds.
    """
    loss = sweep_methods.loss_args(sigma_tn, seed, cfg.ambient_opts)
    return [f'--outdir={outdir}', f'--data={data_path}', '--nosubdir', *loss, f'--seed={seed}', *cfg.train_opts]

def portable_argv(argv):
    """train.py arguments with the sweep's own folder as '<outdir>': a sweep folder moved or copied to another path or
    machine is still recognised as done (its --outdir=<root>/runs/<model>/seed-S names the root)."""
    out = [a for a in argv if a.startswith('--outdir=')]
    if not out:
        return list(argv)
    root = os.path.dirname(os.path.dirname(os.path.dirname(out[0][len('--outdir='):].rstrip('/\\'))))
    return [a.replace(root + os.sep, '<outdir>' + os.sep) if root else a for a in argv]

def train_model(cfg, tools, run, data_path, sigma_tn, seed):
    """Train one model to completion (resuming a half-finished run); skipped when done with the same options."""
    outdir = run_dir(cfg, sigma_tn, seed)
    done_path = os.path.join(outdir, 'sweep-train-done.json')
    argv = train_argv(cfg, data_path, sigma_tn, seed, outdir)
    if os.path.isfile(done_path):
        if portable_argv(read_json(done_path)['argv']) != portable_argv(argv):
            raise dnnlib.util.UserError(f'{outdir} was trained with other options; use another --outdir or delete it')
        return
    run.mkdir(outdir)
    state = checkpoint.latest_training_state(outdir)
    resume = [f'--resume={state}'] if state else []
    start = time.time()
    run(tools['train'] + argv + resume, f'train {stage_label(sigma_tn)} seed={seed}')
    if not run.dry_run:
        write_json(done_path, dict(argv=argv, resumed_from=state, seconds=time.time() - start))

def list_snapshots(outdir):
    """[(kimg, path)] of the network snapshots in a run directory, by kimg; the untrained kimg-0 one excluded.

    The .safetensors twin of a pickle is preferred: loading it runs no code from the file.
    """
    twin = lambda p: p[:-len('.pkl')] + '.safetensors'
    return [(kimg, twin(p) if os.path.isfile(twin(p)) else p) for kimg, p in checkpoint.list_snapshots(outdir) if kimg > 0]


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
        batch = read_json(options).get('batch_size')
    return dict(kimg=nimg / 1000, nimg=nimg, iters=None if not batch else int(round(nimg / batch)),
                epochs=nimg / num_train if num_train else None)

#----------------------------------------------------------------------------
# Evaluation of one snapshot.

def eval_dir(cfg, sigma_tn, seed, kimg):
    """Evaluation folder of one snapshot."""
    return os.path.join(cfg.outdir, 'evals', model_name(sigma_tn, seed), f'snapshot-{kimg:06d}')

def generate_samples(cfg, tools, run, snapshot, folder):
    """samples/ (one PNG per seed 0..N-1, EMA weights) and grid.png of a snapshot."""
    samples, grid = os.path.join(folder, 'samples'), os.path.join(folder, 'grid.png')
    options_path = os.path.join(folder, 'sampling.json')
    options = dict(samples=cfg.samples, steps=cfg.steps)
    if os.path.isdir(samples) and os.path.isfile(grid):
        # Reuse only samples drawn with the options the report will state.
        found = read_json(options_path) if os.path.isfile(options_path) else dict(samples=len(os.listdir(samples)),
                                                                                    steps=cfg.steps)
        if found != options:
            raise dnnlib.util.UserError(f'{samples} holds {found["samples"]} samples of {found["steps"]} steps, not '
                                        f'{cfg.samples} of {cfg.steps}; use another --outdir or delete it')
        return samples
    run.mkdir(folder)
    _clear_stale(samples)
    _clear_stale(grid)
    if os.path.isdir(samples):
        shutil.rmtree(samples) # Samples without their grid: an interrupted earlier attempt.
    # The grid lands before the samples, and the options before both: once samples/ is in place, all is.
    with run.output(samples) as tmp, run.output(grid, suffix='.png') as tmp_grid:
        run(tools['generate'] + [f'--network={snapshot}', f'--outdir={tmp}', f'--seeds=0-{cfg.samples - 1}',
                                 f'--batch={cfg.gen_batch}', f'--steps={cfg.steps}', f'--grid={tmp_grid}'], 'generate')
        if not run.dry_run:
            write_json(options_path, options)
    return samples

def measure_memorization(cfg, tools, run, images, train_path, dest, reference=None):
    """memorization/ (metrics.json, neighbors.csv, histogram.png, nearest.png) of a folder of images."""
    metrics = os.path.join(dest, 'metrics.json')
    if os.path.isfile(metrics):
        found = (read_json(metrics).get('detector') or {}).get('name')
        if found != cfg.detector:
            raise dnnlib.util.UserError(f'{dest} was measured with --detector={found}, not {cfg.detector}; '
                                        'use another --outdir or delete it')
        return
    _clear_stale(dest)
    if os.path.isdir(dest):
        shutil.rmtree(dest) # No metrics.json: an interrupted earlier attempt.
    ref = [f'--reference={reference}'] if reference else []
    preset = [f'--thresholds-preset={cfg.thresholds_preset}'] if cfg.get('thresholds_preset') else []
    with run.output(dest) as tmp:
        run(tools['memorization'] + [f'--images={images}', f'--data={train_path}', f'--detector={cfg.detector}', *preset,
                                     f'--dest={tmp}', f'--cache-dir={os.path.join(cfg.outdir, "cache")}', *ref],
            'memorization')

def make_figures(cfg, tools, run, data_path, finals):
    """figures/denoise.png (Figure 3: all models) and figures/trajectory-sigma_tn-X.png (EDM vs each ambient model).

    finals: {sigma_tn: final snapshot path} of the first training seed. Skipped when the PNG exists.
    """
    folder = os.path.join(cfg.outdir, 'figures')
    run.mkdir(folder)
    finals = {sweep_methods.parse(s): path for s, path in finals.items()}
    specs = sorted(finals, key=sweep_methods.order)
    nets = [f'--network={finals[s]}' for s in specs]
    labels = [f'--label={sweep_methods.short_label(s)}' for s in specs]
    out = {}
    dest = os.path.join(folder, 'denoise.png')
    if not os.path.isfile(dest):
        with run.output(dest, suffix='.png') as tmp:
            run(tools['figures'] + ['denoise', *nets, *labels, f'--data={data_path}', f'--dest={tmp}'], 'figures')
    out['denoise'] = dest
    for spec in specs:
        if sweep_methods.family(spec) != 'ambient' or 'edm' not in finals:
            continue
        s = sweep_methods.param(spec)
        dest = os.path.join(folder, f'trajectory-sigma_tn-{fmt_number(s)}.png')
        if not os.path.isfile(dest):
            with run.output(dest, suffix='.png') as tmp:
                run(tools['figures'] + ['trajectory', f'--network={finals["edm"]}', f'--network={finals[spec]}', '--label=EDM',
                                        f'--label=sigma_tn={fmt_number(s)}', f'--data={data_path}',
                                        f'--sigma_tn={fmt_number(s)}', f'--noise_seed={cfg.seeds[0]}',
                                        f'--samples={min(cfg.samples, 512)}', f'--steps={cfg.steps}', f'--dest={tmp}'],
                    'figures')
        out[f'trajectory {fmt_number(s)}'] = dest
    return {k: rel_path(cfg, v) for k, v in out.items()}

def measure_quality(cfg, data, samples, dest, heldout):
    """quality.json: FD_<name> (and FID / FD_DINOv2 where available) of the samples against held-out images."""
    if os.path.isfile(dest) or heldout is None:
        return
    images = load_images(samples)[0]
    result = quality.evaluate(images, heldout[0], heldout[1], data.name, cache_dir=os.path.join(cfg.outdir, 'cache'),
                              detectors=True, allow_download=cfg.download)
    write_json(dest, result)

def measure_reference_quality(cfg, data, heldout):
    """evals/training-set/quality.json: the training images themselves scored as samples (a quality reference)."""
    dest = os.path.join(cfg.outdir, 'evals', 'training-set', 'quality.json')
    if not os.path.isfile(dest):
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        result = quality.evaluate(load_images(data.train)[0], heldout[0], heldout[1], data.name,
                                  cache_dir=os.path.join(cfg.outdir, 'cache'))
        write_json(dest, result)
    return read_json(dest)

#----------------------------------------------------------------------------
# Results.

#----------------------------------------------------------------------------
# One table row.

def rel_path(cfg, path):
    """path relative to the sweep's output folder (as the reports show it)."""
    return os.path.relpath(path, cfg.outdir)

def collect_row(cfg, sigma_tn, seed, kimg, num_train, quality_name):
    """One table row (dict) of a fully evaluated snapshot of one training seed."""
    folder = eval_dir(cfg, sigma_tn, seed, kimg)
    mem = read_json(os.path.join(folder, 'memorization', 'metrics.json'))
    spec = sweep_methods.parse(sigma_tn)
    row = dict(sigma_tn=sweep_methods.sigma_tn(spec), method=spec, seed=int(seed), loss=sweep_methods.family(spec),
               **snapshot_progress(run_dir(cfg, sigma_tn, seed), kimg, num_train),
               ratio_fraction=mem['ratio_fraction'], fraction_above=mem['fraction_above'],
               similarity_mean=mem['similarity_mean'], num_samples=mem['num_samples'],
               grid=rel_path(cfg, os.path.join(folder, 'grid.png')),
               nearest=rel_path(cfg, os.path.join(folder, 'memorization', 'nearest.png')),
               neighbors=rel_path(cfg, os.path.join(folder, 'memorization', 'neighbors.csv')))
    qpath = os.path.join(folder, 'quality.json')
    row['quality'] = read_json(qpath) if os.path.isfile(qpath) else None
    row['fd'] = row['quality'][f'FD_{quality_name}'] if row['quality'] else None
    return row

#----------------------------------------------------------------------------
