"""What the memorization metrics write: metrics.json, neighbors.csv, a similarity histogram, a nearest-neighbour grid."""

import csv
import io
import json
import math
import os

import numpy as np
import PIL.Image
import PIL.ImageDraw

import dnnlib

GRID_PAIRS = 16

def nearest_grid(samples, train_images, sample_ids, train_ids, labels=None, columns=4, min_size=64):
    """RGB uint8 HWC grid: each generated sample beside its nearest training image, labelled above.

    Returns (grid, boxes): boxes[i] = ((y, x) of the sample, (y, x) of the training image, cell size).
    """
    c, h, w = samples.shape[1:]
    scale = max(1, math.ceil(min_size / max(h, w)))
    ch, cw = h * scale, w * scale
    label_h, gap, pad = 12, 2, 6
    pair_w = 2 * cw + gap
    rows = max(1, math.ceil(len(sample_ids) / columns))
    cols = min(columns, max(1, len(sample_ids)))
    grid = PIL.Image.new('RGB', (cols * (pair_w + pad) + pad, rows * (label_h + ch + pad) + pad), (255, 255, 255))
    draw = PIL.ImageDraw.Draw(grid)

    def to_pil(img):
        arr = img.permute(1, 2, 0).numpy()
        arr = np.repeat(arr, 3, axis=2) if c == 1 else arr[:, :, :3]
        return PIL.Image.fromarray(arr).resize((cw, ch), PIL.Image.NEAREST)

    boxes = []
    for k, (s, t) in enumerate(zip(sample_ids, train_ids)):
        y = pad + (k // columns) * (label_h + ch + pad)
        x = pad + (k % columns) * (pair_w + pad)
        if labels is not None:
            draw.text((x, y), labels[k], fill=(0, 0, 0))
        grid.paste(to_pil(samples[s]), (x, y + label_h))
        grid.paste(to_pil(train_images[t]), (x + cw + gap, y + label_h))
        boxes.append(((y + label_h, x), (y + label_h, x + cw + gap), (ch, cw)))
    return np.asarray(grid), boxes


def _histogram_png(similarity, reference, thresholds):
    """PNG bytes: histogram of top-1 similarities, with the held-out reference when given."""
    from matplotlib.figure import Figure # pylint: disable=import-outside-toplevel
    values = [similarity] + ([reference] if reference is not None else [])
    lo = min(float(np.min(v)) for v in values)
    bins = np.linspace(min(lo, min(thresholds)) - 1e-3, 1 + 1e-3, 51)
    fig = Figure(figsize=(6, 4), dpi=100) # No pyplot: no global backend or figure registry involved.
    ax = fig.subplots()
    ax.hist(similarity, bins=bins, alpha=0.6, density=True, label=f'generated (n={len(similarity)})')
    if reference is not None:
        ax.hist(reference, bins=bins, alpha=0.6, density=True, label=f'held-out real (n={len(reference)})')
    for t in thresholds:
        ax.axvline(t, color='k', lw=0.6, ls='--')
    ax.set_xlabel('cosine similarity to nearest training image')
    ax.set_ylabel('density')
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format='png')
    return buf.getvalue()


def _png_bytes(array):
    buf = io.BytesIO()
    PIL.Image.fromarray(array).save(buf, format='png')
    return buf.getvalue()


def _csv_bytes(names, samples):
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator='\n')
    writer.writerow(['file', 'nearest', 'similarity', 'second', 'second_similarity', 'l2_nearest', 'l2_distance', 'ratio'])
    for i, name in enumerate(names):
        writer.writerow([name, int(samples.nearest[i]), f'{samples.similarity[i]:.6f}', int(samples.second[i]),
                         f'{samples.second_similarity[i]:.6f}', int(samples.l2_nearest[i]),
                         f'{samples.l2_distance[i]:.6f}', f'{samples.ratio[i]:.6f}'])
    return buf.getvalue().encode()


def write_outputs(dest, result, names, grid_pairs=GRID_PAIRS):
    """metrics.json, neighbors.csv, histogram.png and nearest.png in dest, each written atomically."""
    try:
        os.makedirs(dest, exist_ok=True)
    except OSError as err:
        raise dnnlib.util.write_error(dest, err, 'Cannot create') from None
    s = result.samples
    top = np.argsort(-s.similarity, kind='stable')[:grid_pairs]
    labels = [f'{s.similarity[i]:.3f} #{s.nearest[i]}' for i in top]
    grid, _ = nearest_grid(result.images, result.train_images, top, s.position[top], labels)
    ref = result.reference_samples.similarity if result.reference_samples is not None else None
    outputs = {
        'neighbors.csv': _csv_bytes(names, s),
        'histogram.png': _histogram_png(s.similarity, ref, result.metrics['thresholds']),
        'nearest.png': _png_bytes(grid),
        'metrics.json': (json.dumps(result.metrics, indent=2) + '\n').encode(), # Last: its presence marks a finished run.
    }
    # A metrics.json left by an earlier run must not vouch for a half-replaced set of files.
    if os.path.isfile(os.path.join(dest, 'metrics.json')):
        os.remove(os.path.join(dest, 'metrics.json'))
    for fname, data in outputs.items():
        dnnlib.util.atomic_write_bytes(os.path.join(dest, fname), data)

#----------------------------------------------------------------------------
