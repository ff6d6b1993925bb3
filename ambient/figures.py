"""`python -m ambient.figures denoise|trajectory|pareto|curves`: the figures that explain the method, and the plots
of a sweep. The command line only; the figures are drawn by ambient/experiments/figures.py and
ambient/experiments/sweep_report.py.
"""

import os

import click
import numpy as np

import dnnlib
from ambient.experiments.figures import denoise_grid, plot_denoise, plot_trajectories, states_at, trajectory_distances
from training.dataset import load_images
from training.snapshot import load_network

#----------------------------------------------------------------------------

def _load_nets(networks, labels):
    if labels and len(labels) != len(networks):
        raise dnnlib.util.UserError(f'Give one --label per --network ({len(networks)}), or none')
    nets = [load_network(p, device='cpu', verbose=False).eval() for p in networks]
    return nets, list(labels) or [os.path.basename(os.path.dirname(os.path.abspath(p))) or p for p in networks]


def _floats(text, what):
    try:
        values = [float(v) for v in text.split(',') if v.strip()]
    except ValueError:
        raise dnnlib.util.UserError(f'{what}: cannot parse {text!r} as comma-separated numbers') from None
    if not values or any(not np.isfinite(v) or v <= 0 for v in values):
        raise dnnlib.util.UserError(f'{what}: give positive finite numbers, got {text!r}')
    return values


def _check_dest(dest):
    if os.path.isdir(dest):
        raise dnnlib.util.UserError(f'--dest: {dest} is a directory; give a .png file name')


@click.group()
def cli():
    """Figures that explain the method."""


@cli.command()
@click.option('--network', 'networks', help='Network snapshot (repeat for several models)', metavar='PKL|SAFETENSORS', multiple=True, required=True)
@click.option('--label', 'labels', help='Row label of each --network, in order', metavar='STR', multiple=True)
@click.option('--data', help='Training set: the images to denoise come from it', metavar='ZIP|DIR', type=str, required=True)
@click.option('--sigmas', help='Noise levels', metavar='LIST', type=str, default='0.5,1,2,5,10', show_default=True)
@click.option('--images', 'num_images', help='How many training images (the first ones)', metavar='INT', type=click.IntRange(min=1), default=3, show_default=True)
@click.option('--seed', help='Seed of the noise', metavar='INT', type=click.IntRange(min=0), default=0, show_default=True)
@click.option('--dest', help='Output PNG', metavar='PNG', type=str, required=True)
def denoise(networks, labels, data, sigmas, num_images, seed, dest):
    """Figure 3: each model's clean prediction of the same noisy training images at several noise levels."""
    _check_dest(dest)
    sigmas = _floats(sigmas, '--sigmas')
    nets, labels = _load_nets(networks, labels)
    images = load_images(data)[0][:num_images]
    preds, noisy = denoise_grid(nets, images, sigmas, seed=seed)
    plot_denoise(preds, noisy, sigmas, labels, dest, images=images)
    print(f'Wrote {dest}')


@cli.command()
@click.option('--network', 'networks', help='Network snapshot (repeat for several models)', metavar='PKL|SAFETENSORS', multiple=True, required=True)
@click.option('--label', 'labels', help='Label of each --network, in order', metavar='STR', multiple=True)
@click.option('--data', help='The training set of the models', metavar='ZIP|DIR', type=str, required=True)
@click.option('--sigma_tn', help='Noise level of the noisy copies', metavar='FLOAT', type=float, required=True)
@click.option('--noise_seed', help='Seed of the noisy copies (train.py --noise_seed)', metavar='INT', type=click.IntRange(min=0), default=0, show_default=True)
@click.option('--samples', help='Trajectories per model (seeds 0..N-1)', metavar='INT', type=click.IntRange(min=1), default=256, show_default=True)
@click.option('--steps', help='Heun steps from sigma_max down to sigma_tn', metavar='INT', type=click.IntRange(min=2), default=18, show_default=True)
@click.option('--dest', help='Output PNG', metavar='PNG', type=str, required=True)
def trajectory(networks, labels, data, sigma_tn, noise_seed, samples, steps, dest):
    """Lemma 4.1: where each model's sampling trajectories stand at sigma_tn."""
    _check_dest(dest)
    sigma_tn = _floats(str(sigma_tn), '--sigma_tn')[0]
    nets, labels = _load_nets(networks, labels)
    images, info = load_images(data)
    distances = [trajectory_distances(states_at(net, sigma_tn, list(range(samples)), steps), images,
                                      info.raw_indices, sigma_tn, noise_seed) for net in nets]
    plot_trajectories(distances, labels, sigma_tn, dest)
    for d, label in zip(distances, labels):
        print(f'{label}: median distance to nearest x0 {np.median(d["to_clean"]):.3f}, '
              f'to nearest x_tn {np.median(d["to_noisy"]):.3f} (units of sigma_tn*sqrt(dim))')
    print(f'Wrote {dest}')


def _load_sweep(sweep_dir):
    """The summary a sweep wrote (sweep.json), with its aggregated groups."""
    path = os.path.join(sweep_dir, 'sweep.json')
    if not os.path.isfile(path):
        raise dnnlib.util.UserError(f'--sweep: {path} not found; give the --outdir of a finished ambient.sweep')
    import json # pylint: disable=import-outside-toplevel
    with open(path, 'rb') as f:
        summary = json.load(f)
    if not summary.get('groups'):
        raise dnnlib.util.UserError(f'--sweep: {path} holds no evaluated snapshots')
    return summary


@cli.command()
@click.option('--sweep', 'sweep_dir', help='Output folder of ambient.sweep (reads its sweep.json)', metavar='DIR', type=str, required=True)
@click.option('--dest', help='Output PNG', metavar='PNG', type=str, required=True)
def pareto(sweep_dir, dest):
    """Quality vs memorized fraction of every model of a sweep (the paper's Figure 1; a marker per method)."""
    from ambient.experiments import sweep_report # pylint: disable=import-outside-toplevel
    _check_dest(dest)
    summary = _load_sweep(sweep_dir)
    if not sweep_report.plot_pareto_png(summary, summary['groups'], dest):
        raise dnnlib.util.UserError(f'--sweep: {sweep_dir} measured no quality (no held-out images): nothing to plot')
    print(f'Wrote {dest}')


@cli.command()
@click.option('--sweep', 'sweep_dir', help='Output folder of ambient.sweep (reads its sweep.json)', metavar='DIR', type=str, required=True)
@click.option('--dest', help='Output PNG', metavar='PNG', type=str, required=True)
def curves(sweep_dir, dest):
    """Memorized fraction, mean top-1 similarity and quality of every model of a sweep along training."""
    from ambient.experiments import sweep_report # pylint: disable=import-outside-toplevel
    _check_dest(dest)
    summary = _load_sweep(sweep_dir)
    sweep_report.plot_curves_png(summary, summary['groups'], dest)
    print(f'Wrote {dest}')


if __name__ == '__main__':
    cli() # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
