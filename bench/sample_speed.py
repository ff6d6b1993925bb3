"""Speed of EDM's Heun sampler (training.sampler, per-seed CPU generators, float64 state) vs a bare loop of the same network evaluations."""

import os
import sys
import time

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) # run as a script from anywhere
from training import networks, sampler # pylint: disable=wrong-import-position

# Named network configs: EDMPrecond keyword arguments (DDPM++ U-Nets, small enough for a CPU).
CONFIGS = {
    'ddpmpp-16': dict(img_resolution=16, img_channels=3, model_type='SongUNet', model_channels=32, channel_mult=[1, 2],
                      num_blocks=1, attn_resolutions=[8], dropout=0),
    'digits-8': dict(img_resolution=8, img_channels=1, model_type='SongUNet', model_channels=32, channel_mult=[1, 2],
                     num_blocks=2, attn_resolutions=[4], dropout=0),
    'cifar-32': dict(img_resolution=32, img_channels=3, model_type='SongUNet', model_channels=128, channel_mult=[2, 2, 2],
                     num_blocks=4, attn_resolutions=[16], dropout=0),
}


def _bare_loop(net, seeds, num_steps, device):
    """The same 2*num_steps-1 network calls on a float32 batch, with no sampler arithmetic or per-seed noise."""
    shape = [len(seeds), net.img_channels, net.img_resolution, net.img_resolution]
    x = torch.randn(shape, device=device)
    sigma = torch.tensor(1.0, device=device)
    with torch.no_grad():
        for _ in range(2 * num_steps - 1):
            x = net(x, sigma)
    return x


def _sampler(net, seeds, num_steps, device):
    return sampler.sample_batch(net, seeds, device=device, num_steps=num_steps)


def _timed(fn, net, seeds, num_steps, device):
    if device.type == 'cuda':
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn(net, seeds, num_steps, device)
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _rates(net, batch, num_steps, device, repeats):
    """Best-of-repeats images/second of the sampler and of the bare loop, timed alternately so load drift hits both."""
    for fn in (_sampler, _bare_loop):
        fn(net, list(range(min(batch, 2))), 2, device) # warm-up
    best = [float('inf'), float('inf')]
    for r in range(repeats):
        seeds = list(range(r * batch, (r + 1) * batch))
        for k, fn in enumerate((_sampler, _bare_loop)):
            best[k] = min(best[k], _timed(fn, net, seeds, num_steps, device))
    return batch / best[0], batch / best[1]


@click.command()
@click.option('--config', 'config_names', help='Network configs, comma separated', type=str, default='ddpmpp-16,digits-8', show_default=True)
@click.option('--batch', help='Images per batch', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--steps', 'num_steps', help='Heun steps (2*steps-1 network evaluations)', type=click.IntRange(min=2), default=18, show_default=True)
@click.option('--repeats', help='Timed repeats (best is kept)', type=click.IntRange(min=1), default=3, show_default=True)
def main(config_names, batch, num_steps, repeats):
    """Images/second of the Heun sampler vs a bare loop of the same network evaluations; CUDA when present."""
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    names = config_names.split(',')
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise click.BadParameter(f'unknown config(s) {unknown}; choose from {sorted(CONFIGS)}', param_hint='--config')
    threads = f', {torch.get_num_threads()} threads' if device.type == 'cpu' else f' ({torch.cuda.get_device_name()})'
    print(f'device {device}{threads}, batch {batch}, {num_steps} steps = {2 * num_steps - 1} network evaluations per image')
    ratios = []
    for name in names:
        torch.manual_seed(0)
        net = networks.EDMPrecond(**CONFIGS[name]).eval().requires_grad_(False).to(device)
        ours, bare = _rates(net, batch, num_steps, device, repeats)
        print(f'{name:>10}: sampler {ours:9.1f} img/s | bare loop {bare:9.1f} img/s')
        ratios.append((name, bare / ours))
    print('overhead ratio (sampler time / bare-loop time per image): ' + ', '.join(f'{n}: {r:.3f}x' for n, r in ratios))


if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter
