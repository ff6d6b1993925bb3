"""Training speed: the loop's per-step work vs a bare forward/backward/step (or ambient vs EDM loss), measured side by side."""

import contextlib
import inspect
import io
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
import zipfile

import click
import numpy as np
import PIL.Image
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import dnnlib # pylint: disable=wrong-import-position
import train # pylint: disable=wrong-import-position
from training import checkpoint, training_loop # pylint: disable=wrong-import-position

#----------------------------------------------------------------------------

def write_digits_zip(path, res):
    """scikit-learn's 1797 real 8x8 digits as an EDM dataset zip, upsampled (nearest) to res x res."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    factor = res // 8
    with zipfile.ZipFile(path, 'w') as z:
        labels = []
        for i, image in enumerate(images):
            buf = io.BytesIO()
            PIL.Image.fromarray(np.kron(image, np.ones([factor, factor], dtype=np.uint8))).save(buf, format='png')
            name = f'{i // 1000:05d}/img{i:08d}.png'
            z.writestr(name, buf.getvalue())
            labels.append([name, int(digits.target[i])])
        z.writestr('dataset.json', json.dumps(dict(labels=labels)))
    return str(path)

def train_config(args):
    """train.py's training_loop() arguments for a command line (built by train.py itself)."""
    ctx = train.main.make_context('train.py', list(args))
    c, _desc, _state = train.build_config(dnnlib.EasyDict(ctx.params))
    return c

def setup(c, device):
    """Everything a training step needs, seeded as training_loop() seeds it."""
    checkpoint.seed_rank(c.seed) # pylint: disable=protected-access
    with contextlib.redirect_stdout(io.StringIO()): # Keep the module summary out of the report.
        return training_loop.setup_training(c.dataset_kwargs, c.data_loader_kwargs, c.network_kwargs, c.loss_kwargs,
                                            c.optimizer_kwargs, c.get('augment_kwargs'), c.seed, c.batch_size, c.batch_gpu,
                                            device, bf16=c.get('bf16', False), loss_scaling=c.loss_scaling)

def loop_step_fn(t, c):
    """The loop's per-step work: data loading, accumulation, lr ramp, nan_to_num, optimizer, EMA, NaN tracking."""
    defaults = inspect.signature(training_loop.training_loop).parameters
    opt = {name: c.get(name, defaults[name].default) for name in ('lr_rampup_kimg', 'ema_halflife_kimg', 'ema_rampup_ratio')}
    state = dict(nimg=0)
    def step():
        training_loop.train_step(t, state['nimg'], **opt)
        state['nimg'] += c.batch_size
    return step

def bare_step_fn(t):
    """Forward/backward/step of the same network, loss and optimizer on one fixed batch already on the device."""
    images, labels, extras = training_loop._next_batch(t) # pylint: disable=protected-access
    def step():
        t.optimizer.zero_grad(set_to_none=True)
        loss = t.loss_fn(net=t.net, images=images, labels=labels, augment_pipe=t.augment_pipe, **extras)
        loss.sum().mul(1 / t.batch_size).backward()
        t.optimizer.step()
    return step

def measure(fns, steps, rounds, warmup, device):
    """Median seconds per step of each named function, interleaving rounds so load changes hit all alike."""
    def run(fn, n):
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(n):
            fn()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) / n
    for fn in fns.values():
        run(fn, warmup)
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(run(fn, steps))
    return {name: statistics.median(v) for name, v in times.items()}

#----------------------------------------------------------------------------

@click.command()
@click.option('--res',      help='Image resolution (digits upsampled)', type=click.Choice(['8', '16']), default='8', show_default=True)
@click.option('--arch',     help='Network architecture', type=click.Choice(['ddpmpp', 'ncsnpp', 'adm']), default='ddpmpp', show_default=True)
@click.option('--cbase',    help='Channel multiplier', type=int, default=32, show_default=True)
@click.option('--cres',     help='Channels per resolution', type=str, default='1,2', show_default=True)
@click.option('--batch',    help='Batch size', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--augment',  help='Augment probability (as train.py)', type=click.FloatRange(min=0, max=1), default=0.12, show_default=True)
@click.option('--loss',     help='edm: our loop vs a bare step, EDM loss; ambient: ambient vs EDM loss, both in our loop', type=click.Choice(['edm', 'ambient']), default='edm', show_default=True)
@click.option('--sigma_tn', help='Ambient noise level (--loss=ambient)', type=float, default=0.2, show_default=True)
@click.option('--steps',    help='Steps per timed round', type=click.IntRange(min=1), default=5, show_default=True)
@click.option('--rounds',   help='Timed rounds (median taken)', type=click.IntRange(min=1), default=5, show_default=True)
@click.option('--warmup',   help='Untimed steps first', type=click.IntRange(min=0), default=3, show_default=True)
@click.option('--workers',  help='DataLoader workers of the loop', type=click.IntRange(min=1), default=1, show_default=True)
def main(res, arch, cbase, cres, batch, augment, loss, sigma_tn, steps, rounds, warmup, workers):
    """Print training images/second of our loop and of its reference, then their ratio (last line)."""
    torch.multiprocessing.set_start_method('spawn', force=True) # As train.py.
    device = torch.device('cuda') if torch.cuda.is_available() else torch.device('cpu')
    with tempfile.TemporaryDirectory() as tmp:
        data = write_digits_zip(os.path.join(tmp, f'digits{res}.zip'), int(res))
        args = [f'--outdir={tmp}', f'--data={data}', f'--arch={arch}', f'--cbase={cbase}', f'--cres={cres}',
                f'--batch={batch}', f'--augment={augment}', f'--workers={workers}', '--seed=0']
        print(f'device {device}, digits {res}x{res}, {arch} cbase {cbase} cres {cres}, batch {batch}, augment {augment}, '
              f'{steps} steps x {rounds} rounds (median)')
        if loss == 'edm':
            c = train_config(args)
            t = setup(c, device)
            fns = dict(loop=loop_step_fn(t, c), bare=bare_step_fn(t))
            ref, ours = 'bare', 'loop'
        else:
            c_edm = train_config(args)
            c_amb = train_config(args + ['--loss=ambient', f'--sigma_tn={sigma_tn}'])
            fns = dict(edm=loop_step_fn(setup(c_edm, device), c_edm), ambient=loop_step_fn(setup(c_amb, device), c_amb))
            ref, ours = 'edm', 'ambient'
        sec = measure(fns, steps, rounds, warmup, device)
    for name, s in sec.items():
        print(f'{name:8s} {batch / s:9.1f} img/s  ({s * 1e3:.1f} ms/step)')
    print(f'ratio {ours}/{ref} time per step: {sec[ours] / sec[ref]:.3f}')

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
