"""Memorization metrics: each generated image's nearest training images in a detector's feature space.

The default (`--detector=dinov2`, arch vitg14, preprocess ambient) is the measure of the authors'
find_dataset_neighbors.py (kulinshah98/memorization_noisy_data): DINOv2 ViT-g/14 from torch.hub, its
forward output (the normalised class token), inputs in [0, 1] reflect-padded to a multiple of the 14-pixel
patch without resizing or ImageNet normalisation; features are L2-normalised and the similarity of a sample
is its largest dot product (cosine) with any training image. Their script limits the generated images with
--max_size (5000 in scripts/memorization_metrics.sh; EDM's seeded subset); ours takes the same option but
defaults to all images. Both compare against every training image.

Differences: grey images are repeated to three channels; samples are featurised in batches, not one by one
(float32 rounding only); the authors' script stores the raw top-1 similarities (and a softmax over them)
without thresholds, while we report the fraction above each of THRESHOLDS, the top-2 neighbours and a
pixel-space copy criterion they do not compute (Yoon et al. 2023, Gu et al. 2023: nearest / second-nearest
L2 distance < 1/3, images in [-1, 1], searched exactly in float64).
"""

import functools
import hashlib
import io
import json
import math
import os

import numpy as np
import torch

import dnnlib
from ambient.metrics import nn_search
from torch_utils import distributed as dist
from training.dataset import load_images
from training.detectors import load_detector

THRESHOLDS = (0.85, 0.875, 0.9, 0.925, 0.95) # The paper's Table 1.
RATIO_THRESHOLD = 1 / 3                        # nearest < 1/3 of the second-nearest (Yoon et al. 2023; Gu et al. 2023; in the spirit of Carlini et al. 2023).
DINOV2_ARCHS = ('vitg14', 'vitl14')

#----------------------------------------------------------------------------
# Inputs.

def content_hash(images, raw_indices):
    """SHA-256 of a dataset's decoded pixels, shape and raw indices: the training-feature cache key."""
    h = hashlib.sha256()
    h.update(json.dumps(list(images.shape)).encode())
    h.update(np.ascontiguousarray(raw_indices, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(images.numpy()))
    return h.hexdigest()


def parse_thresholds(text):
    """'0.85,0.9' -> (0.85, 0.9); every threshold must be a cosine similarity in [-1, 1]."""
    try:
        values = tuple(float(x) for x in str(text).split(',') if x.strip())
    except ValueError:
        raise dnnlib.util.UserError(f'--thresholds must be comma-separated numbers, got {text!r}') from None
    return check_thresholds(values)


def check_thresholds(values):
    """Validate similarity thresholds."""
    values = tuple(float(v) for v in values)
    if not values:
        raise dnnlib.util.UserError('Give at least one similarity threshold')
    bad = [v for v in values if not -1 <= v <= 1]
    if bad:
        raise dnnlib.util.UserError(f'Similarity thresholds must lie in [-1, 1], got {bad[0]}')
    return values


def match_shape(images, shape, resize, what):
    """Samples brought to the training images' CHW shape: refused unless resize is allowed (spatial only)."""
    c, h, w = images.shape[1:]
    if c != shape[0]:
        raise dnnlib.util.UserError(f'{what} have {c} channel(s) but the training images have {shape[0]}; '
                                    f'convert one of them so that they match')
    if (h, w) == tuple(shape[1:]):
        return images, None
    if not resize:
        raise dnnlib.util.UserError(f'{what} are {w}x{h} but the training images are {shape[2]}x{shape[1]}; '
                                    f'pass --resize to resize the samples to the training resolution')
    x = torch.nn.functional.interpolate(images.to(torch.float32), size=tuple(shape[1:]), mode='bicubic', antialias=True)
    resized = x.round().clamp(0, 255).to(torch.uint8)
    return resized, dict(source=[int(h), int(w)], target=[int(shape[1]), int(shape[2])], mode='bicubic-antialias')

#----------------------------------------------------------------------------
# Detector and features.

def make_detector(name, path=None, device='cpu', arch=None, preprocess=None):
    """Load a detector by name; arch/preprocess only apply to dinov2."""
    if name != 'dinov2':
        if arch is not None or preprocess is not None:
            raise dnnlib.util.UserError('--arch and --preprocess apply only to --detector=dinov2')
        opts = {}
    else:
        arch = arch or 'vitg14'
        if arch not in DINOV2_ARCHS:
            raise dnnlib.util.UserError(f'Unknown DINOv2 arch {arch!r}; choose {"|".join(DINOV2_ARCHS)}')
        opts = dict(arch=f'dinov2_{arch}', preprocess=preprocess or 'ambient')
    return load_detector(name, path=path, device=device, option='--detector-path', **opts)


def detector_info(detector, arch=None):
    """JSON description of a detector (name, preprocessing, DINOv2 arch, feature width)."""
    if detector.name == 'dinov2':
        dim = getattr(detector, 'feature_dim', None)
        arch = arch or getattr(detector, 'arch', None) or {1536: 'vitg14', 1024: 'vitl14'}.get(dim, f'dim{dim}')
    return dict(name=str(detector.name), preprocess=str(getattr(detector, 'preprocess', '')),
                arch=arch, feature_dim=getattr(detector, 'feature_dim', None))


def _shard(n):
    """Indices of this rank's strided share of n items."""
    return torch.arange(dist.get_rank(), n, dist.get_world_size())


def gather_strided(local, n):
    """Reassemble per-rank strided shares (rank r holds items r, r+W, ...) into the full [n, ...] tensor."""
    world = dist.get_world_size()
    if world == 1:
        return local
    per = math.ceil(n / world)
    device = dist.get_sync_device()
    padded = torch.zeros([per, *local.shape[1:]], dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local.to(device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    torch.distributed.all_gather(parts, padded)
    out = torch.empty([n, *local.shape[1:]], dtype=local.dtype)
    for rank, part in enumerate(parts):
        count = len(range(rank, n, world))
        out[rank::world] = part[:count].cpu()
    return out


@torch.no_grad()
def featurize(detector, images, batch=64):
    """Detector features of uint8 NCHW images, float32 [N, D] on the CPU, computed in batches."""
    feats = [detector(images[i : i + batch]).to(torch.float32).cpu() for i in range(0, images.shape[0], batch)]
    if not feats:
        return torch.zeros([0, 0])
    return torch.cat(feats)


def featurize_distributed(detector, images, batch=64):
    """Features of all images, each rank computing its strided share."""
    idx = _shard(images.shape[0])
    local = featurize(detector, images[idx], batch)
    if dist.get_world_size() > 1:
        # Ranks with an empty share still need the feature width to join the gather.
        dim = torch.tensor([local.shape[1] if local.numel() else 0], device=dist.get_sync_device())
        torch.distributed.all_reduce(dim, op=torch.distributed.ReduceOp.MAX)
        if local.numel() == 0:
            local = torch.zeros([0, int(dim)])
    return gather_strided(local, images.shape[0])


def weights_id(path):
    """A cheap identity of local detector weights (absolute path, size, mtime); None for the default weights."""
    if path is None:
        return None
    st = os.stat(path) if os.path.exists(path) else None
    return [os.path.abspath(path), st.st_size if st else None, st.st_mtime_ns if st else None]


def train_features(detector, images, raw_indices, cache_dir, arch=None, batch=64, verbose=True, detector_path=None):
    """Detector features of the training images, read from / written to an on-disk cache keyed by content."""
    info = detector_info(detector, arch)
    # The pixel detector learns its width on first use, so the width is checked on load, not hashed.
    # Local weights (--detector-path) are part of the key: other weights give other features.
    key = hashlib.sha256(json.dumps([content_hash(images, raw_indices), info['name'], info['preprocess'],
                                     info['arch'], weights_id(detector_path)]).encode()).hexdigest()[:32]
    path = os.path.join(cache_dir, f'train-{info["name"]}-{key}.npy')
    if os.path.isfile(path):
        try:
            feats = np.load(path, allow_pickle=False)
            usable = feats.ndim == 2 and bool(np.all(np.isfinite(feats)))
        except Exception as e: # pylint: disable=broad-except
            dist.print0(f'Note: ignoring the unreadable feature cache {path} ({e.__class__.__name__}: {e}); recomputing it')
            usable = False
        if usable and feats.shape[0] == images.shape[0] and info['feature_dim'] in (None, feats.shape[1]):
            if verbose:
                dist.print0(f'Training features from cache {path}')
            return torch.from_numpy(feats)
    if verbose:
        dist.print0(f'Computing {info["name"]} features of {images.shape[0]} training images...')
    feats = featurize_distributed(detector, images, batch)
    if dist.get_rank() == 0:
        buf = io.BytesIO()
        np.save(buf, feats.numpy())
        try: # The cache only saves time: a cache that cannot be written is a note, not a failure.
            os.makedirs(cache_dir, exist_ok=True)
            dnnlib.util.atomic_write_bytes(path, buf.getvalue())
        except (OSError, dnnlib.util.UserError) as e:
            dist.print0(f'Note: cannot write the feature cache {path} ({getattr(e, "strerror", None) or getattr(e, "message", e)})')
    return feats

#----------------------------------------------------------------------------
# Search and summary.

def _top2(search, queries, keys, fill, chunk):
    """search()'s top-2, padded with (fill, -1) where there are fewer than two keys; empty without queries."""
    if queries.shape[0] == 0:
        return torch.zeros([0, 2], dtype=queries.dtype), torch.zeros([0, 2], dtype=torch.int64)
    v, i = search(queries, keys, k=2, chunk=chunk)
    if v.shape[1] < 2:
        v = torch.cat([v, torch.full_like(v, fill)], dim=1)
        i = torch.cat([i, torch.full_like(i, -1)], dim=1)
    return v.cpu(), i.cpu()


def nearest_neighbors(detector, images, train_feats, train_pixels, batch=64, chunk=nn_search.DEFAULT_CHUNK):
    """Per sample: top-2 cosine neighbours in feature space and the pixel-space L2 ratio (nearest / second)."""
    device = dist.get_device()
    local = images[_shard(images.shape[0])]
    feats = featurize(detector, local, batch).to(device)
    sims, nn = _top2(nn_search.cosine_topk, feats, train_feats.to(device), -1.0, chunk)
    # Pixel L2 on uint8 values, rescaled afterwards: the ratio does not depend on the map to [-1, 1].
    # float64 makes every product of integer pixels exact, so copies and near-copies are ranked exactly
    # (float32 rounding in 2<q,b> - |b|^2 exceeds the gap between near-duplicates).
    l2_search = functools.partial(nn_search.l2_topk, backend='torch') # faiss would search in float32
    dists, l2nn = _top2(l2_search, local.flatten(1).to(device, torch.float64), train_pixels, torch.inf, chunk)
    dists = dists / 127.5
    # 0/0 (a sample equal to two identical training images) counts as a copy; without a second image the
    # ratio is undefined (NaN, never counted).
    ratio = torch.where(dists[:, 1] > 0, dists[:, 0] / dists[:, 1], torch.zeros_like(dists[:, 0]))
    ratio = torch.where(dists[:, 1].isinf(), torch.nan, ratio)
    n = images.shape[0]
    return dict(similarity=gather_strided(sims, n), index=gather_strided(nn, n), distance=gather_strided(dists, n),
                l2_index=gather_strided(l2nn, n), ratio=gather_strided(ratio, n))


def summarize(similarity, ratio, thresholds):
    """Scalar metrics of top-1 similarities and L2 ratios."""
    similarity = np.asarray(similarity, dtype=np.float64)
    ratio = np.asarray(ratio, dtype=np.float64)
    return dict(
        num_samples=int(similarity.size),
        fraction_above={f'{t:g}': float(np.mean(similarity > t)) for t in thresholds},
        similarity_mean=float(similarity.mean()),
        similarity_p95=float(np.percentile(similarity, 95)),
        similarity_max=float(similarity.max()),
        ratio_threshold=RATIO_THRESHOLD,
        ratio_fraction=float(np.mean(ratio < RATIO_THRESHOLD)),
    )


def _raw(raw_indices, positions):
    """Map dataset positions to raw training indices (-1 stays -1)."""
    positions = np.asarray(positions)
    return np.where(positions >= 0, raw_indices[np.clip(positions, 0, None)], -1)


def _evaluate(detector, images, train, thresholds, batch, chunk):
    """Match one image set against the training set: per-sample arrays and summary metrics."""
    nn = nearest_neighbors(detector, images, train.features, train.pixels, batch=batch, chunk=chunk)
    samples = dnnlib.EasyDict(
        nearest=_raw(train.raw, nn['index'][:, 0].numpy()), similarity=nn['similarity'][:, 0].numpy(),
        second=_raw(train.raw, nn['index'][:, 1].numpy()), second_similarity=nn['similarity'][:, 1].numpy(),
        l2_nearest=_raw(train.raw, nn['l2_index'][:, 0].numpy()), l2_distance=nn['distance'][:, 0].numpy(),
        ratio=nn['ratio'].numpy(), position=nn['index'][:, 0].numpy())
    return samples, summarize(samples.similarity, samples.ratio, thresholds)


def _as_images(images, what):
    """A non-empty uint8 NCHW tensor, or UserError."""
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise dnnlib.util.UserError(f'{what} must be uint8 NCHW, got {images.dtype} of shape {list(images.shape)}')
    if images.shape[0] == 0:
        raise dnnlib.util.UserError(f'No {what.lower()} to evaluate')
    return images


def _load_detector_once(detector, detector_path, arch, preprocess):
    """Load a detector by name on every rank, rank 0 first so that a download or cache fill happens once."""
    with dist.rank0_first():
        return make_detector(detector, path=detector_path, device=dist.get_device(), arch=arch, preprocess=preprocess)


def compute_memorization(images, train_dataset_path, detector='dinov2', detector_path=None, arch=None,
                         preprocess=None, thresholds=THRESHOLDS, reference=None, batch=64,
                         chunk=nn_search.DEFAULT_CHUNK, cache_dir=None, resize=False, verbose=True):
    """Memorization metrics of uint8 NCHW samples against a training set (folder or zip).

    `detector` is a name (pixel|inception|dinov2) or a loaded detector object; `reference` optional held-out
    real images (uint8 NCHW tensor or folder/zip path) measured the same way as a no-memorization baseline.
    Returns EasyDict(metrics=JSON-able dict, samples=per-sample arrays, reference_samples=..., images=...,
    train_images=...). Under torchrun every rank calls it; each rank featurises a strided share.
    """
    thresholds = check_thresholds(thresholds)
    images = _as_images(images, 'Generated images')
    if verbose:
        dist.print0(f'Loading training set {train_dataset_path}...')
    train_images, train_info = load_images(train_dataset_path)
    train_images, raw = torch.from_numpy(train_images), train_info.raw_indices
    images, resized = match_shape(images, train_images.shape[1:], resize, 'Generated images')
    ref_images = None
    if reference is not None:
        ref_images = torch.from_numpy(load_images(reference)[0]) if isinstance(reference, (str, os.PathLike)) else reference
        ref_images, _ = match_shape(_as_images(ref_images, 'Reference images'), train_images.shape[1:], resize, 'Reference images')
    if isinstance(detector, str):
        detector = _load_detector_once(detector, detector_path, arch, preprocess)

    cache_dir = cache_dir or dnnlib.make_cache_dir_path('memorization')
    train = dnnlib.EasyDict(images=train_images, raw=raw, pixels=train_images.flatten(1),
                            features=train_features(detector, train_images, raw, cache_dir, arch, batch, verbose,
                                                    detector_path=detector_path))
    if verbose:
        dist.print0(f'Searching nearest neighbours of {images.shape[0]} samples...')
    samples, summary = _evaluate(detector, images, train, thresholds, batch, chunk)
    metrics = dict(num_samples=summary.pop('num_samples'), num_train=int(train_images.shape[0]),
                   data=str(train_dataset_path),
                   detector=detector_info(detector, arch),
                   resize=resized, thresholds=list(thresholds), **summary,
                   ratio_space='pixel L2, images scaled to [-1, 1]')
    result = dnnlib.EasyDict(metrics=metrics, samples=samples, images=images, train_images=train_images,
                             reference_samples=None)
    if ref_images is not None:
        result.reference_samples, metrics['reference'] = _evaluate(detector, ref_images, train, thresholds, batch, chunk)
        if isinstance(reference, (str, os.PathLike)):
            metrics['reference']['path'] = str(reference)
    return result
