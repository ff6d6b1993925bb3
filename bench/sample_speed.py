"""Sampling speed: EDM's sampler loop (bench/edm_reference.py) vs our default and fast paths, images compared, side by side."""

import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time

import click
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) # run as a script from anywhere
from training import networks, sampler # pylint: disable=wrong-import-position
import edm_reference # pylint: disable=wrong-import-position
import bench_util # pylint: disable=wrong-import-position
from torch_utils import cpu_features # pylint: disable=wrong-import-position

# Named network configs: EDMPrecond keyword arguments (DDPM++ U-Nets as train.py --arch=ddpmpp builds them).
_DDPMPP = dict(model_type='SongUNet', embedding_type='positional', encoder_type='standard', decoder_type='standard',
               channel_mult_noise=1, resample_filter=[1, 1], dropout=0)
CONFIGS = {
    'digits-8': dict(img_resolution=8, img_channels=1, model_channels=32, channel_mult=[1, 2], **_DDPMPP),
    'narrow-32': dict(img_resolution=32, img_channels=3, model_channels=64, channel_mult=[1, 2, 2], **_DDPMPP),
    'cifar-32': dict(img_resolution=32, img_channels=3, model_channels=128, channel_mult=[2, 2, 2], **_DDPMPP),
}

# Our sampling paths: sampler.Denoiser options (generate.py --bf16 / --compile); 'ours' is the exact default.
MODES = {'ours': {}, 'bf16': dict(bf16=True), 'compile': dict(compile=True), 'bf16+compile': dict(bf16=True, compile=True),
         'channels_last': dict(channels_last=True), 'bf16+cl': dict(bf16=True, channels_last=True)}


def random_network(config, seed=0):
    """An EDMPrecond with EDM's initialisation, except that zero-initialised weights get small random values (else D(x) = c_skip x)."""
    torch.manual_seed(seed)
    net = networks.EDMPrecond(**CONFIGS[config]).eval().requires_grad_(False)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0, 0.05)
    return net


def sample_fn(mode, net, device, num_steps):
    """A function seeds -> uint8 NHWC numpy images for a named path."""
    if mode == 'edm':
        return lambda seeds: edm_reference.edm_sample_batch(net, seeds, device, num_steps=num_steps)
    denoiser = sampler.Denoiser(net, **MODES[mode]) if MODES[mode] else net
    return lambda seeds: sampler.sample_batch(denoiser, seeds, device=device, num_steps=num_steps).numpy()


def measure(fns, batch, repeats, device):
    """Median seconds per batch of each path (the same seeds, paths interleaved), first-batch seconds, and the images."""
    def run(fn, seeds):
        return bench_util.timed(fn, device, seeds)
    seeds = list(range(batch))
    first, images = {}, {}
    for name, fn in fns.items():
        first[name], images[name] = run(fn, seeds) # Includes torch.compile's compilation.
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(run(fn, seeds)[0])
    return {name: statistics.median(v) for name, v in times.items()}, first, images


def image_difference(a, b):
    """'identical', or the largest and mean absolute uint8 difference and the share of identical images."""
    d = np.abs(a.astype(np.int32) - b.astype(np.int32)).reshape(len(a), -1)
    if not d.any():
        return 'identical'
    return f'max {d.max()}, mean {d.mean():.3f} levels, {np.mean(d.max(1) == 0):.0%} of images identical'


def time_commands(commands, repeats):
    """Median wall seconds of each whole command, run alternately."""
    times = {name: [] for name in commands}
    for _ in range(repeats):
        for name, cmd in commands.items():
            start = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in times.items()}


def whole_process(network_pkl, batch, seeds, repeats, tmp):
    """generate.py (default and --bf16) vs EDM's generate.py (bench/edm_reference.py), whole processes."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    commands = {
        'edm generate.py': [sys.executable, os.path.join(root, 'bench', 'edm_reference.py'), network_pkl, os.path.join(tmp, 'edm'), f'0-{seeds - 1}', str(batch)],
        'our generate.py': [sys.executable, os.path.join(root, 'generate.py'), f'--network={network_pkl}', f'--outdir={os.path.join(tmp, "ours")}', f'--seeds=0-{seeds - 1}', f'--batch={batch}'],
        'ours --bf16=1': [sys.executable, os.path.join(root, 'generate.py'), f'--network={network_pkl}', f'--outdir={os.path.join(tmp, "bf16")}', f'--seeds=0-{seeds - 1}', f'--batch={batch}', '--bf16=1'],
    }
    sec = time_commands(commands, repeats)
    print(f'whole process, {seeds} images, batch {batch}, median of {repeats}:')
    for name, s in sec.items():
        print(f'  {name:16s} {s:7.2f} s   x{sec["edm generate.py"] / s:5.2f} vs EDM')


@click.command()
@click.option('--config',  help='Network config (random weights)', type=click.Choice(list(CONFIGS)), default='digits-8', show_default=True)
@click.option('--network', 'network_pkl', help='Use this snapshot pickle instead of --config', type=str, default=None)
@click.option('--batch',   help='Images per batch', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--steps', 'num_steps', help='Heun steps (2*steps-1 network evaluations)', type=click.IntRange(min=2), default=18, show_default=True)
@click.option('--modes',   help=f'Paths besides the EDM reference: {", ".join(MODES)}', type=str, default='ours,bf16', show_default=True, callback=bench_util.modes_option(MODES))
@click.option('--repeats', help='Timed batches per path (median taken)', type=click.IntRange(min=1), default=3, show_default=True)
@click.option('--whole',   help='Also time whole generate.py processes this many times (0 = off)', type=click.IntRange(min=0), default=0, show_default=True)
@click.option('--seeds',   help='Images per whole-process run', type=click.IntRange(min=1), default=256, show_default=True)
@click.option('--memory/--no-memory', help='Also measure each path\'s peak memory alone in a child process', default=True, show_default=True)
@click.option('--alone',   help='Run only the named mode (the memory child)', is_flag=True, hidden=True)
def main(config, network_pkl, batch, num_steps, modes, repeats, whole, seeds, memory, alone):
    """Images/second of EDM's sampler loop and of our paths (one batch, same seeds), ratios to EDM, image differences, peak memory."""
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if alone:
        modes = modes[-1:]
    if network_pkl is not None:
        with open(network_pkl, 'rb') as f:
            net = pickle.load(f)['ema'].to(device)
    else:
        net = random_network(config).to(device)
    fns = {mode: sample_fn(mode, net, device, num_steps) for mode in modes}
    sec, first, images = measure(fns, batch, repeats, device)
    if alone:
        bench_util.report(device)
        return
    where = f'{torch.get_num_threads()} threads' if device.type == 'cpu' else torch.cuda.get_device_name(device)
    what = network_pkl or f'{config} (random weights)'
    print(cpu_features.describe())
    print(f'device {device} ({where}), torch {torch.__version__}; {what}; batch {batch}, {num_steps} steps '
          f'({2 * num_steps - 1} network evaluations), median of {repeats}')
    for mode in modes:
        mem = bench_util.child_peak_memory(__file__, mode, ['--repeats=1', '--whole=0']) if memory else None
        mem_str = f'{mem:6.2f} GB' if mem is not None else '     - '
        print(f'{mode:14s} {batch / sec[mode]:9.2f} img/s   x{sec["edm"] / sec[mode]:5.2f} vs EDM   peak {mem_str}   '
              f'first batch {first[mode]:7.2f} s   images vs EDM: {image_difference(images[mode], images["edm"])}')
    if whole:
        with tempfile.TemporaryDirectory() as tmp:
            if network_pkl is None:
                network_pkl = os.path.join(tmp, 'network.pkl')
                with open(network_pkl, 'wb') as f:
                    pickle.dump(dict(ema=net.cpu()), f)
            whole_process(network_pkl, batch, seeds, whole, tmp)


if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter
