"""`python -m ambient.memorization calc`: memorization metrics of generated images against their training set.
The command line only; the computation is ambient/metrics/memorization.py, the files it writes
ambient/metrics/memorization_report.py.
"""

import os

import click
import torch

import dnnlib
from ambient.metrics import memorization_report, nn_search
from ambient.metrics import thresholds as ambient_thresholds
from ambient.metrics.memorization import DINOV2_ARCHS, compute_memorization, parse_thresholds
from torch_utils import distributed as dist
from training.dataset import load_images

#----------------------------------------------------------------------------

@click.group()
def cli():
    """Memorization metrics of generated images against their training set."""


@cli.command()
@click.option('--images', help='Generated images', metavar='DIR|ZIP', type=str, required=True)
@click.option('--data', help='Training set', metavar='ZIP|DIR', type=str, required=True)
@click.option('--detector', help='Feature space', type=click.Choice(['dinov2', 'inception', 'pixel']), default='dinov2', show_default=True)
@click.option('--detector-path', help='Local detector weights instead of the download', metavar='PATH', type=str)
@click.option('--arch', help='DINOv2 backbone  [default: vitg14]', type=click.Choice(DINOV2_ARCHS))
@click.option('--preprocess', help='DINOv2 preprocessing  [default: ambient]', type=click.Choice(['ambient', 'standard']))
@click.option('--dest', help='Output directory', metavar='DIR', type=str, required=True)
@click.option('--thresholds', help='Similarity thresholds (overrides --thresholds-preset)', metavar='LIST', type=str)
@click.option('--thresholds-preset', 'thresholds_preset', help='The paper\'s thresholds of a data set (cifar10, imagenet: 0.9,0.925,0.95; ffhq: 0.85,0.875,0.9; all: 0.85-0.95); auto: inferred from the --data name, else all', type=click.Choice(ambient_thresholds.CHOICES), default='auto', show_default=True)
@click.option('--reference', help='Held-out real images (no-memorization baseline)', metavar='DIR|ZIP', type=str)
@click.option('--batch', help='Detector batch size per rank', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--chunk', help='Rows per block of the neighbour search', metavar='INT', type=click.IntRange(min=1), default=nn_search.DEFAULT_CHUNK, show_default=True)
@click.option('--cache-dir', help='Training-feature cache  [default: dnnlib cache]', metavar='DIR', type=str)
@click.option('--resize', help='Resize samples to the training resolution', is_flag=True)
@click.option('--max_size', help='Evaluate a seeded random subset of this many generated images  [default: all]', metavar='INT', type=click.IntRange(min=1))
def calc(images, data, detector, detector_path, arch, preprocess, dest, thresholds, thresholds_preset, reference, batch, chunk, cache_dir, resize, max_size):
    """Nearest training images of generated images; writes metrics.json, neighbors.csv, histogram.png, nearest.png.

    \b
    # One GPU, DINOv2 ViT-g/14 as in the paper
    python -m ambient.memorization calc --images=out --data=datasets/cifar10-32x32.zip --dest=mem
    \b
    # Several GPUs, with a held-out baseline
    torchrun --standalone --nproc_per_node=2 -m ambient.memorization calc --images=out \\
        --data=train.zip --reference=heldout.zip --dest=mem
    """
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise dnnlib.util.UserError(f'--dest: {dest} exists and is not a directory')
    dnnlib.util.check_writable(dest, is_dir=True, what='--dest') # Before the features, which may take hours.
    for what, path in [('--images', images), ('--data', data), ('--reference', reference)]:
        if path is not None and not os.path.exists(path):
            raise dnnlib.util.UserError(f'{what}: dataset not found: {path}')
    dist.init()
    if thresholds is None:
        thresholds_preset, thresholds = ambient_thresholds.resolve(thresholds_preset, [data])
    else:
        thresholds_preset, thresholds = None, parse_thresholds(thresholds)
    dist.print0(f'Loading generated images {images}...')
    sample_images, info = load_images(images, max_size=max_size)
    result = compute_memorization(torch.from_numpy(sample_images), data, detector=detector, detector_path=detector_path, arch=arch,
                                  preprocess=preprocess, thresholds=thresholds, reference=reference, batch=batch,
                                  chunk=chunk, cache_dir=cache_dir, resize=resize)
    result.metrics['images'] = images
    result.metrics['max_size'] = max_size
    result.metrics['thresholds_preset'] = thresholds_preset
    if dist.get_rank() == 0:
        memorization_report.write_outputs(dest, result, info.names)
        m = result.metrics
        above = ', '.join(f'>{t}: {v:.4f}' for t, v in m['fraction_above'].items())
        print(f'{m["num_samples"]} samples vs {m["num_train"]} training images; similarity mean {m["similarity_mean"]:.4f}; '
              f'{above}; ratio<1/3: {m["ratio_fraction"]:.4f}')
        print(f'Wrote {dest}')
    dist.shutdown()


if __name__ == '__main__':
    cli() # pylint: disable=no-value-for-parameter
