"""Command line for Frechet distances (FID, FD_DINOv2) between image folders and reference statistics; torchrun-aware."""

import os

import click

import dnnlib
from torch_utils import distributed as dist
from training.metrics import METRICS, calculate_stats, check_ref_dest, frechet_distance, load_metric_detector, load_ref, save_ref

_detector_option = click.option('--detector', 'detector_path', help='Local detector weights instead of the download', metavar='PATH', type=str, default=None)
_metric_option = click.option('--metric', help='Distance to compute', type=click.Choice(sorted(METRICS)), default='fid', show_default=True)


@click.group()
def main():
    """Calculate Frechet Inception Distance (FID) or FD_DINOv2.

    Examples:

    \b
    # Generate 50000 images, then compute FID against EDM's CIFAR-10 reference
    torchrun --standalone --nproc_per_node=1 generate.py --outdir=fid-tmp --seeds=0-49999 --subdirs \\
        --network=https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-cond-vp.pkl
    torchrun --standalone --nproc_per_node=1 fid.py calc --images=fid-tmp \\
        --ref=https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz

    \b
    # Reference statistics of a dataset, with a local copy of the Inception pickle
    python fid.py ref --data=datasets/my-dataset.zip --dest=fid-refs/my-dataset.npz \\
        --detector=inception-2015-12-05.pkl
    """


@main.command()
@click.option('--images', 'image_path', help='Path to the images', metavar='PATH|ZIP',              type=str, required=True)
@click.option('--ref', 'ref_path',      help='Dataset reference statistics ', metavar='NPZ|URL',    type=str, required=True)
@click.option('--num', 'num_expected',  help='Number of images to use', metavar='INT',              type=click.IntRange(min=2), default=50000, show_default=True)
@click.option('--seed',                 help='Random seed for selecting the images', metavar='INT', type=int, default=0, show_default=True)
@click.option('--batch',                help='Maximum batch size', metavar='INT',                   type=click.IntRange(min=1), default=64, show_default=True)
@_detector_option
@_metric_option
def calc(image_path, ref_path, num_expected, seed, batch, detector_path, metric):
    """Calculate FID (or FD_DINOv2) for a given set of images."""
    if not os.path.exists(image_path): # Before the detector, which may be a download.
        raise dnnlib.util.UserError(f'--images: dataset not found: {image_path}')
    dist.init()
    device = dist.get_device()
    dist.print0(f'Loading dataset reference statistics from "{ref_path}"...')
    mu_ref, sigma_ref = load_ref(ref_path)
    detector = load_metric_detector(metric, detector_path, device)
    if detector.feature_dim is not None and mu_ref.shape[0] != detector.feature_dim:
        raise dnnlib.util.UserError(f'{ref_path} holds {mu_ref.shape[0]}-dim statistics but --metric={metric} gives {detector.feature_dim} features')
    mu, sigma = calculate_stats(image_path, detector, num_expected=num_expected, seed=seed, max_batch_size=batch, device=device)
    dist.print0(f'Calculating {metric.upper()}...')
    if dist.get_rank() == 0:
        print(f'{frechet_distance(mu, sigma, mu_ref, sigma_ref):g}')
    dist.shutdown()


@main.command()
@click.option('--data', 'dataset_path', help='Path to the dataset', metavar='PATH|ZIP', type=str, required=True)
@click.option('--dest', 'dest_path',    help='Destination .npz file', metavar='NPZ',    type=str, required=True)
@click.option('--batch',                help='Maximum batch size', metavar='INT',       type=click.IntRange(min=1), default=64, show_default=True)
@_detector_option
@_metric_option
def ref(dataset_path, dest_path, batch, detector_path, metric):
    """Calculate dataset reference statistics needed by 'calc'."""
    if os.path.isdir(dest_path): # Checked before the statistics, which may take hours.
        raise dnnlib.util.UserError(f'--dest: {dest_path} is a directory; give a .npz file name')
    check_ref_dest(dest_path)
    if not os.path.exists(dataset_path):
        raise dnnlib.util.UserError(f'--data: dataset not found: {dataset_path}')
    dist.init()
    device = dist.get_device()
    detector = load_metric_detector(metric, detector_path, device)
    mu, sigma = calculate_stats(dataset_path, detector, max_batch_size=batch, device=device)
    dist.print0(f'Saving dataset reference statistics to "{dest_path}"...')
    if dist.get_rank() == 0:
        save_ref(dest_path, mu, sigma)
    dist.shutdown()
    dist.print0('Done.')

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
