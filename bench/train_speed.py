"""Training speed: EDM's plain step (bench/edm_reference.py) vs our default and fast paths, side by side, in one process."""

import contextlib
import inspect
import io
import os
import pathlib
import statistics
import sys
import tempfile

import click
import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import dnnlib # pylint: disable=wrong-import-position
import train # pylint: disable=wrong-import-position
from training import checkpoint, dataset, dataset_sources, training_loop # pylint: disable=wrong-import-position
import edm_reference # pylint: disable=wrong-import-position
import bench_util # pylint: disable=wrong-import-position
from torch_utils import cpu_features # pylint: disable=wrong-import-position

#----------------------------------------------------------------------------

def write_digits_zip(path, res, rgb=False):
    """scikit-learn's 1797 real 8x8 digits (dataset_tool.py --source=digits) as an EDM zip, upsampled to res x res, grey or RGB."""
    source = dataset_sources.open_digits()
    images = np.stack([source.load(i) for i in range(source.num_images)]) # [N, 8, 8] uint8
    images = images.repeat(res // 8, axis=1).repeat(res // 8, axis=2)[:, None]
    dataset.write_image_zip(images.repeat(3, axis=1) if rgb else images, source.labels, path)
    return str(path)

def train_config(args):
    """train.py's training_loop() arguments for a command line (built by train.py itself)."""
    ctx = train.main.make_context('train.py', list(args))
    c, _desc, _state = train.build_config(dnnlib.EasyDict(ctx.params))
    return c

def setup(c, device):
    """Everything a training step needs, seeded as training_loop() seeds it."""
    checkpoint.seed_rank(c.seed)
    with contextlib.redirect_stdout(io.StringIO()): # Keep the module summary out of the report.
        return training_loop.setup_training(c.dataset_kwargs, c.data_loader_kwargs, c.network_kwargs, c.loss_kwargs,
                                            c.optimizer_kwargs, c.get('augment_kwargs'), c.seed, c.batch_size, c.batch_gpu,
                                            device, bf16=c.get('bf16', False), loss_scaling=c.loss_scaling,
                                            compile=c.get('compile', False), channels_last=c.get('channels_last', False))

def schedule_kwargs(c):
    """The lr ramp and EMA settings of a config, with training_loop()'s defaults where train.py left them out."""
    defaults = inspect.signature(training_loop.training_loop).parameters
    return {name: c.get(name, defaults[name].default) for name in ('lr_rampup_kimg', 'ema_halflife_kimg', 'ema_rampup_ratio')}

def loop_step_fn(t, c):
    """The loop's per-step work: data loading, accumulation, lr ramp, nan_to_num, optimizer, EMA, NaN tracking."""
    opt = schedule_kwargs(c)
    state = dict(nimg=0)
    def step():
        training_loop.train_step(t, state['nimg'], **opt)
        state['nimg'] += c.batch_size
    return step

def edm_step_fn(t, c, ddp):
    """EDM's plain step (bench/edm_reference.py) on the nets, loss, optimizer and data of setup `t`."""
    return edm_reference.edm_train_step_fn(t, lr=c.optimizer_kwargs.lr, ddp=ddp, **schedule_kwargs(c))

def measure(fns, steps, rounds, warmup, device):
    """Median seconds per step of each named function, interleaving rounds so load changes hit all alike; and first-step seconds."""
    def run(fn, n):
        return bench_util.timed(lambda: [fn() for _ in range(n)], device)[0] / n
    first = {name: run(fn, 1) for name, fn in fns.items()} # Includes torch.compile's compilation.
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(run(fn, steps))
    return {name: statistics.median(v) for name, v in times.items()}, first

#----------------------------------------------------------------------------

# Our training paths, as extra train.py options on top of the shared command line.
MODES = {
    'edm+ddp':       None, # EDM's step wrapped in DDP over a 1-process gloo group, as EDM's train.py runs it.
    'ours':          [],
    'fused':         ['--fused=1'],
    'channels_last': ['--channels_last=1'],
    'bf16':          ['--bf16=1'],
    'bf16+cl':       ['--bf16=1', '--channels_last=1'],
    'compile':       ['--compile=1'],
    'bf16+compile':  ['--bf16=1', '--compile=1'],
    'fast':          ['--bf16=1', '--compile=1', '--fused=1'],
    'bf16+cl+fused': ['--bf16=1', '--channels_last=1', '--fused=1'],
    'fast+cl':       ['--bf16=1', '--channels_last=1', '--compile=1', '--fused=1'],
}

@click.command()
@click.option('--res',      help='Image resolution (digits upsampled)', type=click.Choice(['8', '16', '32']), default='8', show_default=True)
@click.option('--channels', help='Image channels (3: the digit in every channel)', type=click.Choice(['1', '3']), default='1', show_default=True)
@click.option('--arch',     help='Network architecture', type=click.Choice(['ddpmpp', 'ncsnpp', 'adm']), default='ddpmpp', show_default=True)
@click.option('--cbase',    help='Channel multiplier', type=int, default=32, show_default=True)
@click.option('--cres',     help='Channels per resolution', type=str, default='1,2', show_default=True)
@click.option('--batch',    help='Batch size', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--augment',  help='Augment probability (as train.py)', type=click.FloatRange(min=0, max=1), default=0, show_default=True)
@click.option('--dropout',  help='Dropout probability (as train.py)', type=click.FloatRange(min=0, max=1), default=0, show_default=True)
@click.option('--loss',     help='Loss family of our paths (the EDM reference always uses EDM\'s loss)', type=click.Choice(['edm', 'ambient']), default='edm', show_default=True)
@click.option('--sigma_tn', help='Ambient noise level (--loss=ambient)', type=float, default=0.2, show_default=True)
@click.option('--modes',    help=f'Paths to time besides the EDM reference: {", ".join(MODES)}', type=str, default='ours,fused,bf16,compile,fast', show_default=True, callback=bench_util.modes_option(MODES))
@click.option('--steps',    help='Steps per timed round', type=click.IntRange(min=1), default=5, show_default=True)
@click.option('--rounds',   help='Timed rounds (median taken)', type=click.IntRange(min=1), default=5, show_default=True)
@click.option('--warmup',   help='Untimed steps first (after the first step, which is reported)', type=click.IntRange(min=0), default=2, show_default=True)
@click.option('--workers',  help='DataLoader workers of the loop', type=click.IntRange(min=1), default=1, show_default=True)
@click.option('--memory/--no-memory', help='Also measure each path\'s peak memory alone in a child process', default=True, show_default=True)
@click.option('--alone',    help='Run only the named mode (the memory child)', is_flag=True, hidden=True)
def main(res, channels, arch, cbase, cres, batch, augment, dropout, loss, sigma_tn, modes, steps, rounds, warmup, workers, memory, alone):
    """Training images/second of EDM's plain step and of our paths, side by side, with ratios to EDM and peak memory."""
    torch.multiprocessing.set_start_method('spawn', force=True) # As train.py.
    device = torch.device('cuda') if torch.cuda.is_available() else torch.device('cpu')
    if alone:
        modes = modes[-1:]
    with tempfile.TemporaryDirectory() as tmp:
        data = write_digits_zip(os.path.join(tmp, f'digits{res}.zip'), int(res), rgb=(channels == '3'))
        args = [f'--outdir={tmp}', f'--data={data}', f'--arch={arch}', f'--cbase={cbase}', f'--cres={cres}', f'--batch={batch}',
                f'--augment={augment}', f'--dropout={dropout}', f'--workers={workers}', '--seed=0']
        loss_args = ['--loss=ambient', f'--sigma_tn={sigma_tn}'] if loss == 'ambient' else []
        where = f'{torch.get_num_threads()} threads' if device.type == 'cpu' else torch.cuda.get_device_name(device)
        print(cpu_features.describe())
        print(f'device {device} ({where}), torch {torch.__version__}; digits {res}x{res}x{channels}, {arch} cbase {cbase} '
              f'cres {cres}, batch {batch}, augment {augment}, dropout {dropout}, our loss {loss}; {steps} steps x {rounds} '
              f'rounds, median; ratios to EDM\'s plain step (no DDP)')
        fns = {}
        for mode in modes:
            reference = mode.startswith('edm')
            c = train_config(args + ([] if reference else loss_args + MODES[mode]))
            t = setup(c, device)
            fns[mode] = edm_step_fn(t, c, ddp=(mode == 'edm+ddp')) if reference else loop_step_fn(t, c)
        sec, first = measure(fns, steps, rounds, warmup, device)
    if alone:
        bench_util.report(device)
        return
    for mode in modes:
        mem = bench_util.child_peak_memory(__file__, mode, ['--steps=2', '--rounds=1', '--warmup=1']) if memory else None
        mem_str = f'{mem:6.2f} GB' if mem is not None else '     - '
        print(f'{mode:14s} {batch / sec[mode]:9.2f} img/s   x{sec["edm"] / sec[mode]:5.2f} vs EDM   peak {mem_str}   '
              f'first step {first[mode]:7.2f} s')

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
