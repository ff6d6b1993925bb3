"""Frechet distances (FID with Inception-v3, FD_DINOv2) between image folders and reference statistics; torchrun-aware."""

import io
import os

import click
import numpy as np
import scipy.linalg
import torch
import tqdm

import dnnlib
from torch_utils import distributed as dist
from training.dataset import ImageFolderDataset
from training.detectors import load_detector

#----------------------------------------------------------------------------
# metric name -> (detector name, detector options)

METRICS = {
    'fid': ('inception', {}),
    'fd_dinov2': ('dinov2', dict(arch='dinov2_vitl14', preprocess='standard')),
}


def load_metric_detector(metric, detector_path=None, device='cpu'):
    """The detector behind `metric`, from its default source or the local file `detector_path`."""
    name, opts = METRICS[metric]
    if name == 'inception':
        opts = dict(opts, verbose=(dist.get_rank() == 0))
    if name == 'dinov2':
        opts = dict(opts, download=True) # As EDM2's FD_DINOv2: torch.hub fetches what its cache lacks.
    # Rank 0 first, so that a download lands in the cache once.
    if dist.get_rank() != 0:
        dist.barrier()
    dist.print0(f'Loading {name} detector...')
    try:
        return load_detector(name, path=detector_path, device=device, **opts)
    finally:
        if dist.get_rank() == 0:
            dist.barrier()

#----------------------------------------------------------------------------

class FeatureStats:
    """Running float64 sums of features and their outer products, reducible across ranks."""

    def __init__(self, feature_dim, device='cpu'):
        self.count = 0
        self.sum = torch.zeros([feature_dim], dtype=torch.float64, device=device)
        self.outer = torch.zeros([feature_dim, feature_dim], dtype=torch.float64, device=device)

    def add(self, features):
        """Accumulate a [N, D] batch of features."""
        features = features.to(self.sum.device, torch.float64)
        if features.ndim != 2 or features.shape[1] != self.sum.shape[0]:
            raise dnnlib.util.UserError(f'Detector returned features of shape {list(features.shape)}, expected [N, {self.sum.shape[0]}]')
        self.count += features.shape[0]
        self.sum += features.sum(0)
        self.outer += features.T @ features

    def all_reduce(self):
        """Sum the statistics of all ranks (no-op in a single process)."""
        if not dist.is_distributed():
            return
        sync = dist.get_sync_device()
        count = torch.as_tensor([self.count], dtype=torch.float64, device=sync)
        for t in (count, self.sum, self.outer):
            moved = t.to(sync)
            torch.distributed.all_reduce(moved)
            t.copy_(moved)
        self.count = int(count.item())

    def mean_cov(self):
        """Mean and unbiased covariance, as float64 numpy arrays."""
        if self.count < 2:
            raise dnnlib.util.UserError(f'Found {self.count} images, but need at least 2 to compute statistics')
        mu = self.sum / self.count
        sigma = (self.outer - torch.outer(mu, mu) * self.count) / (self.count - 1)
        return mu.cpu().numpy(), sigma.cpu().numpy()


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2): |mu1-mu2|^2 + tr(S1 + S2 - 2 sqrt(S1 S2))."""
    mean_term = np.square(mu1 - mu2).sum()
    root = scipy.linalg.sqrtm(np.dot(sigma1, sigma2))
    return float(np.real(mean_term + np.trace(sigma1 + sigma2 - root * 2)))

#----------------------------------------------------------------------------

def calculate_stats(image_path, detector, num_expected=None, seed=0, max_batch_size=64, device='cpu'):
    """Mean and covariance of detector features over the images in a folder/zip (a seeded subset of num_expected)."""
    device = torch.device(device)
    dist.print0(f'Loading images from "{image_path}"...')
    dataset_obj = ImageFolderDataset(path=image_path, max_size=num_expected, random_seed=seed)
    if num_expected is not None and len(dataset_obj) < num_expected:
        raise dnnlib.util.UserError(f'Found {len(dataset_obj)} images, but expected at least {num_expected}')
    if len(dataset_obj) < 2:
        raise dnnlib.util.UserError(f'Found {len(dataset_obj)} images, but need at least 2 to compute statistics')

    world = dist.get_world_size()
    num_batches = ((len(dataset_obj) - 1) // (max_batch_size * world) + 1) * world
    batches = torch.arange(len(dataset_obj)).tensor_split(num_batches)[dist.get_rank()::world]
    # Worker processes pay off only when a GPU does the detector work.
    workers = dict(num_workers=3, prefetch_factor=2, multiprocessing_context='spawn') if device.type == 'cuda' else {}
    # Fewer images than ranks leave some batches empty, which the default collate cannot stack.
    loader = torch.utils.data.DataLoader(dataset_obj, batch_sampler=[b.tolist() for b in batches if len(b)], **workers)

    feature_dim = detector.feature_dim or int(np.prod(dataset_obj.image_shape))
    stats = FeatureStats(feature_dim, device=device)
    dist.print0(f'Calculating statistics for {len(dataset_obj)} images...')
    for images, _labels in tqdm.tqdm(loader, unit='batch', disable=(dist.get_rank() != 0)):
        stats.add(detector(images.to(device)))
    stats.all_reduce()
    return stats.mean_cov()


def load_ref(ref_path):
    """Reference statistics {'mu', 'sigma'} from a .npz path or URL (EDM's published refs load as-is)."""
    with dnnlib.util.open_url(ref_path, verbose=(dist.get_rank() == 0)) as f:
        data = f.read()
    try:
        ref = dict(np.load(io.BytesIO(data), allow_pickle=False))
    except Exception as e: # pylint: disable=broad-except
        raise dnnlib.util.UserError(f'Cannot read reference statistics {ref_path}: {e.__class__.__name__}: {e}') from None
    if 'mu' not in ref or 'sigma' not in ref:
        raise dnnlib.util.UserError(f'{ref_path} lacks "mu"/"sigma" (keys: {sorted(ref)})')
    mu, sigma = ref['mu'], ref['sigma']
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise dnnlib.util.UserError(f'{ref_path}: mu {list(mu.shape)} and sigma {list(sigma.shape)} do not form a Gaussian')
    return mu, sigma


def save_ref(dest_path, mu, sigma):
    """Write reference statistics as .npz (mu, sigma), atomically."""
    if os.path.dirname(dest_path):
        os.makedirs(os.path.dirname(dest_path), exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, mu=mu, sigma=sigma)
    dnnlib.util.atomic_write_bytes(dest_path, buf.getvalue())

#----------------------------------------------------------------------------

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
