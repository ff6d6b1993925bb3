"""Frechet distances (FID, FD_DINOv2, any detector): feature statistics from image batches, reference .npz files."""

import io
import os

import numpy as np
import scipy.linalg
import torch
import tqdm

import dnnlib
from torch_utils import distributed as dist
from torch_utils import lifetime
from training.dataset import ImageFolderDataset
from training.detectors import load_detector, weights_cached

#----------------------------------------------------------------------------
# metric name -> (detector name, detector options)

METRICS = {
    'fid': ('inception', {}),
    'fd_dinov2': ('dinov2', dict(arch='dinov2_vitl14', preprocess='standard')),
}


def metric_weights_cached(metric):
    """Whether the detector behind `metric` loads without the internet (its default weights are cached)."""
    name, opts = METRICS[metric]
    return weights_cached(name, **opts)


def load_metric_detector(metric, detector_path=None, device='cpu'):
    """The detector behind `metric`, from its default source or the local file `detector_path`."""
    name, opts = METRICS[metric]
    if name == 'inception':
        opts = dict(opts, verbose=(dist.get_rank() == 0))
    if name == 'dinov2':
        opts = dict(opts, download=True) # As EDM2's FD_DINOv2: torch.hub fetches what its cache lacks.
    with dist.rank0_first():
        dist.print0(f'Loading {name} detector...')
        return load_detector(name, path=detector_path, device=device, **opts)

#----------------------------------------------------------------------------
# Mean and covariance.

class FeatureStats:
    """Running float64 sums of features and their outer products, reducible across ranks."""

    def __init__(self, feature_dim, device='cpu'):
        self.count = 0
        self.sum = torch.zeros([feature_dim], dtype=torch.float64, device=device)
        self.outer = torch.zeros([feature_dim, feature_dim], dtype=torch.float64, device=device)

    def add(self, features):
        """Accumulate a [N, D] batch of features."""
        features = torch.as_tensor(features).to(self.sum.device, torch.float64)
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


def feature_stats(features):
    """Mean and unbiased covariance of an in-memory [N, D] feature array (one process)."""
    features = torch.as_tensor(np.asarray(features, dtype=np.float64))
    if features.ndim != 2:
        raise dnnlib.util.UserError(f'Need [N, D] features for a Frechet distance, got shape {list(features.shape)}')
    stats = FeatureStats(features.shape[1])
    stats.add(features)
    return stats.mean_cov()


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2): |mu1-mu2|^2 + tr(S1 + S2 - 2 sqrt(S1 S2))."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    for value, what in [(mu1, 'The first mean'), (sigma1, 'The first covariance'), (mu2, 'The second mean'),
                        (sigma2, 'The second covariance')]:
        dnnlib.util.check_finite(value, f'{what} of the Frechet distance') # NaN would print "nan" and exit 0.
    root = scipy.linalg.sqrtm(np.dot(sigma1, sigma2))
    if not np.all(np.isfinite(root)):
        # Few samples give singular covariances; a tiny ridge keeps the square root defined.
        eps = 1e-6 * np.eye(sigma1.shape[0])
        root = scipy.linalg.sqrtm(np.dot(sigma1 + eps, sigma2 + eps))
    distance = float(np.real(np.square(mu1 - mu2).sum() + np.trace(sigma1 + sigma2 - root * 2)))
    if not np.isfinite(distance):
        raise dnnlib.util.UserError('The Frechet distance is not finite (overflowing feature statistics)')
    return distance

#----------------------------------------------------------------------------
# Statistics of images.

def stats_from_batches(batches, detector, feature_dim, device='cpu', progress=False, total=None):
    """Mean and covariance of detector features over an iterable of uint8 NCHW batches, summed over all ranks."""
    stats = FeatureStats(feature_dim, device=device)
    try:
        for images in tqdm.tqdm(batches, unit='batch', total=total, disable=(not progress or dist.get_rank() != 0)):
            stats.add(detector(torch.as_tensor(images).to(device)))
    except dnnlib.util.UserError as err: # From a DataLoader worker: keep the user's one line, not the worker's traceback.
        raise dnnlib.util.UserError(dnnlib.util.worker_error_message(err)) from None
    stats.all_reduce()
    return stats.mean_cov()


def _rank_loader(dataset_obj, max_batch_size, device):
    """This rank's share of a dataset as a DataLoader of image batches (EDM's split of batches over ranks)."""
    world = dist.get_world_size()
    num_batches = ((len(dataset_obj) - 1) // (max_batch_size * world) + 1) * world
    batches = torch.arange(len(dataset_obj)).tensor_split(num_batches)[dist.get_rank()::world]
    # Worker processes pay off only when a GPU does the detector work.
    workers = dict(num_workers=3, prefetch_factor=2, multiprocessing_context='spawn') if device.type == 'cuda' else {}
    # Fewer images than ranks leave some batches empty, which the default collate cannot stack.
    return torch.utils.data.DataLoader(dataset_obj, batch_sampler=[b.tolist() for b in batches if len(b)],
                                       **lifetime.data_loader_kwargs(workers))


def calculate_stats(image_path, detector, num_expected=None, seed=0, max_batch_size=64, device='cpu'):
    """Mean and covariance of detector features over the images in a folder/zip (a seeded subset of num_expected)."""
    device = torch.device(device)
    dist.print0(f'Loading images from "{image_path}"...')
    dataset_obj = ImageFolderDataset(path=image_path, max_size=num_expected, random_seed=seed)
    if num_expected is not None and len(dataset_obj) < num_expected:
        raise dnnlib.util.UserError(f'Found {len(dataset_obj)} images, but expected at least {num_expected}')
    if len(dataset_obj) < 2:
        raise dnnlib.util.UserError(f'Found {len(dataset_obj)} images, but need at least 2 to compute statistics')
    loader = _rank_loader(dataset_obj, max_batch_size, device)
    feature_dim = detector.feature_dim or int(np.prod(dataset_obj.image_shape))
    dist.print0(f'Calculating statistics for {len(dataset_obj)} images...')
    return stats_from_batches((images for images, _labels in loader), detector, feature_dim, device, progress=True,
                              total=len(loader))

#----------------------------------------------------------------------------
# Reference statistics files (EDM's .npz layout).

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
    if mu.dtype.kind not in 'iuf' or sigma.dtype.kind not in 'iuf':
        raise dnnlib.util.UserError(f'{ref_path}: mu and sigma must be numbers, not {mu.dtype} / {sigma.dtype}')
    dnnlib.util.check_finite(mu, f'{ref_path}: mu')
    dnnlib.util.check_finite(sigma, f'{ref_path}: sigma')
    return mu, sigma


def check_ref_dest(dest_path):
    """UserError unless dest_path can take reference statistics: writable, and not an existing file of another kind."""
    dnnlib.util.check_writable(dest_path, what='--dest')
    if os.path.isfile(dest_path):
        try:
            with np.load(dest_path, allow_pickle=False) as old:
                is_ref = {'mu', 'sigma'} <= set(old.files)
        except Exception: # pylint: disable=broad-except
            is_ref = False
        if not is_ref:
            raise dnnlib.util.UserError(f'--dest: {dest_path} exists and is not reference statistics (.npz with mu, sigma); '
                                        'refusing to overwrite it')


def save_ref(dest_path, mu, sigma):
    """Write reference statistics as .npz (mu, sigma), atomically."""
    dnnlib.util.check_finite(mu, 'The statistics\' mean')
    dnnlib.util.check_finite(sigma, 'The statistics\' covariance')
    if os.path.dirname(dest_path):
        try:
            os.makedirs(os.path.dirname(dest_path), exist_ok=True)
        except OSError as err:
            raise dnnlib.util.write_error(os.path.dirname(dest_path), err, 'Cannot create') from None
    buf = io.BytesIO()
    np.savez(buf, mu=mu, sigma=sigma)
    dnnlib.util.atomic_write_bytes(dest_path, buf.getvalue())

#----------------------------------------------------------------------------
