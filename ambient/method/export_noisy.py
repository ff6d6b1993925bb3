"""Export the fixed noisy training set S_tn (x_tn in [-1, 1] scale, float32) as .npz plus a PNG preview grid."""

import io
import os

import numpy as np
import PIL.Image

import dnnlib
from ambient.method.dataset import NoisyCopyDataset


def export_noisy(data, sigma_tn, seed, dest, max_images=None, grid=64):
    """Write S_tn of dataset `data` to dest/noisy-tn{sigma_tn}-seed{seed}.npz and .png; returns the two paths."""
    dnnlib.util.check_writable(dest, is_dir=True, what='--dest') # Before reading the data set.
    dataset = NoisyCopyDataset(dict(class_name='training.dataset.ImageFolderDataset', path=data, use_labels=True),
                               sigma_tn=sigma_tn, noise_seed=seed)
    count = len(dataset) if max_images is None else min(len(dataset), max_images)
    x_tn = np.empty([count] + list(dataset.image_shape), dtype=np.float32)
    raw_idx = np.empty([count], dtype=np.int64)
    for i in range(count):
        x_tn[i] = dataset.noisy_image(i)
        raw_idx[i] = dataset.get_raw_index(i)
    arrays = dict(x_tn=x_tn, raw_idx=raw_idx, sigma_tn=np.float64(sigma_tn), noise_seed=np.int64(seed))
    if dataset.has_labels:
        arrays['labels'] = np.stack([dataset.get_details(i).raw_label for i in range(count)])
    dataset.close()

    try:
        os.makedirs(dest, exist_ok=True)
    except OSError as err:
        raise dnnlib.util.write_error(dest, err, 'Cannot create') from None
    stem = os.path.join(dest, f'noisy-tn{sigma_tn:g}-seed{seed}')
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    dnnlib.util.atomic_write_bytes(stem + '.npz', buf.getvalue())
    buf = io.BytesIO()
    preview_grid(x_tn[:grid]).save(buf, format='PNG')
    dnnlib.util.atomic_write_bytes(stem + '.png', buf.getvalue())
    return stem + '.npz', stem + '.png'


def preview_grid(images):
    """A near-square PIL grid of float images [N, C, H, W] in [-1, 1] (clipped)."""
    n, c, h, w = images.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = (n - 1) // cols + 1
    pixels = np.clip(np.rint((images + 1) * 127.5), 0, 255).astype(np.uint8)
    grid = np.zeros([rows * h, cols * w, c], dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = pixels[i].transpose(1, 2, 0)
    return PIL.Image.fromarray(grid[:, :, 0], 'L') if c == 1 else PIL.Image.fromarray(grid, 'RGB')
