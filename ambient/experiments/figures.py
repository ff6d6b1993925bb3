"""Pictures that explain the method: how models denoise training images at high noise (the paper's Figure 3),
and where their sampling trajectories stand at sigma_tn (Lemma 4.1: near the noisy copies, not the images).
"""

import numpy as np
import torch

from ambient.experiments.pareto import pyplot, save_figure
from ambient.method.dataset import fixed_noise
from training import sampler

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
