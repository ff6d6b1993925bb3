"""Pictures that explain the method: how models denoise training images at high noise (the paper's Figure 3),
and where their sampling trajectories stand at sigma_tn (Lemma 4.1: near the noisy copies, not the images).
"""

import os

import click
import numpy as np
import torch

import dnnlib
from ambient.dataset import fixed_noise
from ambient.pareto import pyplot, save_figure
from training import sampler
from training.dataset import load_images
from training.snapshot import load_network

#----------------------------------------------------------------------------
# Computation.

def _to_float(images):
    return torch.as_tensor(np.asarray(images)).to(torch.float64) / 127.5 - 1


@torch.no_grad()
def denoise_grid(nets, images, sigmas, seed=0):
    """Clean predictions D(x0 + sigma n, sigma) of every net: array [nets, images, sigmas, C, H, W] in [-1, 1].

    The noise n is drawn once per (image, sigma) from `seed`, so every net denoises the very same inputs;
    also returns those noisy inputs, [images, sigmas, C, H, W].
    """
    x0 = _to_float(images)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn([len(sigmas), *x0.shape], generator=gen, dtype=torch.float64)
    noisy = torch.stack([x0 + s * n for s, n in zip(sigmas, noise)], dim=1)
    out = []
    for net in nets:
        rows = []
        for k, s in enumerate(sigmas):
            sigma = torch.full([len(x0)], float(s), dtype=torch.float64)
            rows.append(net(noisy[:, k].to(torch.float32), sigma.to(torch.float32)).to(torch.float64))
        out.append(torch.stack(rows, dim=1))
    return torch.stack(out).numpy(), noisy.numpy()


class _Recorder(torch.nn.Module):
    """Wraps a denoiser and keeps the last input it is called with at noise level `sigma_at`.

    Heun calls the net at sigma_at twice: first on the Euler guess (the corrector of the step that ends there),
    then on the corrected state (the last step starts there); the last call holds the trajectory's state.
    """

    def __init__(self, net, sigma_at):
        super().__init__()
        self.net, self.sigma_at, self.recorded = net, float(sigma_at), None
        self.sigma_min, self.sigma_max, self.round_sigma = net.sigma_min, net.sigma_max, net.round_sigma

    def forward(self, x, sigma, class_labels=None):
        s = float(torch.as_tensor(sigma).reshape(-1)[0])
        if abs(s - self.sigma_at) <= 1e-6 * self.sigma_at:
            self.recorded = x.detach().clone()
        return self.net(x, sigma, class_labels)


@torch.no_grad()
def states_at(net, sigma_tn, seeds, num_steps=18, sigma_max=80):
    """Sampler states x(sigma_tn) [N, C, H, W]: EDM's Heun schedule from sigma_max down to exactly sigma_tn."""
    rec = _Recorder(net, net.round_sigma(torch.as_tensor(sigma_tn, dtype=torch.float64)).item())
    rnd = sampler.StackedRandomGenerator('cpu', seeds)
    latents = rnd.randn([len(seeds), net.img_channels, net.img_resolution, net.img_resolution])
    sampler.edm_sampler(rec, latents, randn_like=rnd.randn_like, num_steps=num_steps, sigma_min=sigma_tn,
                        sigma_max=sigma_max)
    return rec.recorded.to(torch.float64)


def trajectory_distances(states, train_images, raw_indices, sigma_tn, noise_seed):
    """Distances of each state to its nearest training image x0 and nearest noisy copy x_tn = x0 + sigma_tn eps,
    in units of sigma_tn * sqrt(dimension) (the length of the copies' noise)."""
    x0 = _to_float(train_images).flatten(1)
    eps = torch.from_numpy(np.stack([fixed_noise(noise_seed, r, train_images.shape[1:]) for r in raw_indices]))
    x_tn = x0 + sigma_tn * eps.to(torch.float64).flatten(1)
    flat = states.flatten(1)
    scale = sigma_tn * np.sqrt(flat.shape[1])
    return dict(to_clean=(torch.cdist(flat, x0).min(1).values / scale).numpy(),
                to_noisy=(torch.cdist(flat, x_tn).min(1).values / scale).numpy())

#----------------------------------------------------------------------------
# Pictures.

def _tile(img):
    """[C, H, W] in [-1, 1] -> HW or HWC uint8-range floats for imshow."""
    img = np.clip((np.asarray(img) + 1) / 2, 0, 1)
    return img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)


def plot_denoise(preds, noisy, sigmas, labels, path, images=None):
    """PNG grid: for each training image, a row of noisy inputs, then one row per model's clean prediction.

    images (uint8 NCHW): the clean training images, shown in a first column beside their input row.
    """
    plt = pyplot()
    n_img, n_sig = noisy.shape[:2]
    rows, first = n_img * (1 + len(labels)), int(images is not None)
    fig, axes = plt.subplots(rows, n_sig + first, figsize=(1.3 * (n_sig + first) + 2.2, 1.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for i in range(n_img):
        block = [('x0 + sigma n', noisy[i])] + [(label, preds[m, i]) for m, label in enumerate(labels)]
        for r, (label, imgs) in enumerate(block):
            row = axes[i * len(block) + r]
            row[first].set_ylabel(label, fontsize=7, rotation=0, ha='right', va='center')
            if first:
                if r == 0:
                    row[0].imshow(_tile(_to_float(images[i:i + 1])[0]), cmap='gray', vmin=0, vmax=1, interpolation='nearest')
                    row[0].set_title('training image x0' if i == 0 else '', fontsize=8)
                    row[0].set_ylabel(f'image {i}', fontsize=7, rotation=0, ha='right', va='center')
                else:
                    row[0].axis('off')
            for k in range(n_sig):
                ax = row[k + first]
                ax.imshow(_tile(imgs[k]), cmap='gray', vmin=0, vmax=1, interpolation='nearest')
                if i == 0 and r == 0:
                    ax.set_title(f'sigma={sigmas[k]:g}', fontsize=8)
    fig.suptitle('Clean predictions D(x0 + sigma n) of training images (same noise n for every model)', fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    save_figure(fig, path)


def plot_trajectories(distances, labels, sigma_tn, path):
    """PNG: per model, distance of x(sigma_tn) to the nearest training image and to the nearest noisy copy."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    top = max(max(d['to_clean'].max(), d['to_noisy'].max()) for d in distances) * 1.05
    bins = np.linspace(0, top, 40)
    for ax, key, title in [(axes[0], 'to_clean', 'distance to the nearest training image x0'),
                           (axes[1], 'to_noisy', 'distance to the nearest noisy copy x_tn')]:
        for d, label in zip(distances, labels):
            ax.hist(d[key], bins=bins, alpha=0.5, label=f'{label} (median {np.median(d[key]):.2f})')
        ax.set_title(title, fontsize=9)
        ax.set_xlabel('distance / (sigma_tn * sqrt(dim))')
        ax.legend(fontsize=7)
    axes[0].set_ylabel('samples')
    fig.suptitle(f'Sampler states when the trajectories reach sigma_tn={sigma_tn:g}', fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)

#----------------------------------------------------------------------------
# Command line.

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
    from ambient import sweep_report # pylint: disable=import-outside-toplevel
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
    from ambient import sweep_report # pylint: disable=import-outside-toplevel
    _check_dest(dest)
    summary = _load_sweep(sweep_dir)
    sweep_report.plot_curves_png(summary, summary['groups'], dest)
    print(f'Wrote {dest}')


if __name__ == '__main__':
    cli() # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
