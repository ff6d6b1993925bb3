"""A data set's distance scale: each training image's nearest and second-nearest OTHER training image.

Pixel distances are L2 over all C*H*W values with images scaled to [-1, 1] (EDM's x / 127.5 - 1), searched
exactly with the memorization metric's certified L2 search (`nn_search.l2_topk`, ranking centred pixels in float32
and certifying the order in float64), distances from the integer pixels, so copies and near copies are ranked
exactly, the same on every machine. The result is that of
searching every image against the whole set with k=3 and dropping only its own index: an exact duplicate (distance 0)
is a neighbour, and equal distances list the lower index first. The search itself runs over the distinct images
(identical images are found by hashing), whose copies then fill in. Groups of exact and near duplicates are the
connected components of "distance 0" and "distance < NEAR_DUPLICATE_FRACTION x the median nearest-neighbour
distance" over every pair of images.
`measure_features` gives the same scale in a detector's feature space (cosine, as the memorization metric).
"""

import hashlib

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
import torch

import dnnlib
from ambient.metrics import nn_search

QUANTILES = (1, 5, 10, 25, 50, 75, 90, 99)  # percentiles reported as p1, p5, ...
NEAR_DUPLICATE_FRACTION = 0.1               # near duplicates: closer than this fraction of the median NN distance
PIXEL_SCALE = 127.5                         # uint8 -> [-1, 1]: x / PIXEL_SCALE - 1 (distances divide by it)
MIN_IMAGES = 3                              # an image needs two other images for a nearest and a second nearest
PAIR_VALUES = 2**24                         # distances per block of the pairwise pass over near-duplicate candidates

#----------------------------------------------------------------------------

def _check_images(images):
    """uint8 [N, C, H, W] numpy with N >= MIN_IMAGES, or UserError."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise dnnlib.util.UserError(f'Images must be uint8 NCHW, got {images.dtype} of shape {list(images.shape)}')
    if images.shape[0] < MIN_IMAGES:
        raise dnnlib.util.UserError(f'The distance scale needs at least {MIN_IMAGES} images (a nearest and a second-nearest '
                                    f'other image each), got {images.shape[0]}')
    if min(images.shape[1:]) < 1:
        raise dnnlib.util.UserError(f'Images of shape {list(images.shape[1:])} hold no pixels')
    return images


def quantiles(values):
    """{'p1': ..., 'p50': ..., 'p99': ...} of a 1-D array (numpy's linear interpolation)."""
    values = np.asarray(values, dtype=np.float64)
    return {f'p{q}': float(v) for q, v in zip(QUANTILES, np.percentile(values, QUANTILES))}


def drop_self(values, indices):
    """The first two entries of each top-k row (k >= 3) that are not the row's own index.

    The own index is dropped where it appears; a row without it (at least k other images tie at its own distance,
    listed first by lower index) keeps its first two entries.
    """
    values, indices = np.asarray(values), np.asarray(indices)
    other = indices != np.arange(len(indices))[:, None]
    keep = np.argsort(~other, axis=1, kind='stable')[:, :2] # positions of the first two others, in list order
    return np.take_along_axis(values, keep, axis=1), np.take_along_axis(indices, keep, axis=1)


def _distinct(flat):
    """Distinct images, numbered in order of first occurrence: (first [U], the first index of each; label [N])."""
    number, first = {}, []
    label = np.empty(len(flat), dtype=np.int64)
    for i, row in enumerate(flat):
        u = number.setdefault(hashlib.blake2b(row.tobytes(), digest_size=16).digest(), len(first))
        if u == len(first):
            first.append(i)
        label[i] = u
    first = np.asarray(first, dtype=np.int64)
    copies = np.flatnonzero(first[label] != np.arange(len(flat)))
    if copies.size and not np.array_equal(flat[copies], flat[first[label[copies]]]): # a 128-bit digest collision
        raise RuntimeError('blake2b digest collision between different images')
    return first, label


def _first_members(label, count, m):
    """[U, m]: the m lowest image indices of each distinct image (-1 where it has fewer)."""
    order = np.argsort(label, kind='stable')
    starts = np.concatenate([[0], np.cumsum(count)[:-1]])
    out = np.full([len(count), m], -1, dtype=np.int64)
    for j in range(m):
        has = count > j
        out[has, j] = order[starts[has] + j]
    return out


def _components(num_nodes, rows, cols):
    """Component label of each node of the undirected graph with edges (rows[j], cols[j])."""
    graph = scipy.sparse.coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(num_nodes, num_nodes))
    return scipy.sparse.csgraph.connected_components(graph, directed=True, connection='weak')[1]


def _groups(label, n):
    """Images sharing a label, as sorted index lists of size >= 2, ordered by their first index."""
    order = np.argsort(label, kind='stable')
    bounds = np.flatnonzero(np.diff(label[order])) + 1
    groups = [g.tolist() for g in np.split(order, bounds) if len(g) >= 2] if n else []
    return sorted(groups, key=lambda g: g[0])


def _close_pairs(flat, candidates, threshold):
    """Pairs (i < j) of candidate rows at pixel distance < threshold, as [2, P] indices into flat.

    Distances come from exact integer arithmetic in float64 (|a|^2 + |b|^2 - 2 a.b of uint8 pixels: every product
    and partial sum is an integer below 2^53), then the same sqrt and scaling as the search's values.
    """
    x = torch.from_numpy(flat[candidates]).to(torch.float64)
    sq = x.square().sum(dim=1)
    pairs = [np.zeros([2, 0], dtype=np.int64)]
    rows = max(1, PAIR_VALUES // max(1, len(candidates)))
    for r0 in range(0, len(candidates), rows):
        d2 = sq[r0 : r0 + rows, None] + sq[None, :] - 2 * (x[r0 : r0 + rows] @ x.T)
        upper = torch.arange(r0, r0 + d2.shape[0])[:, None] < torch.arange(len(candidates))[None, :]
        r, c = ((d2.clamp(min=0).sqrt() / PIXEL_SCALE < threshold) & upper).nonzero(as_tuple=True)
        pairs.append(np.stack([candidates[(r + r0).numpy()], candidates[c.numpy()]]))
    return np.concatenate(pairs, axis=1)


def measure(images, chunk=None):
    """The pixel distance scale of uint8 [N, C, H, W] images (N >= 3).

    Returns a dict: `nearest`, `second` (float64 [N], distances to the nearest and second-nearest other image, images
    in [-1, 1]), `nearest_index`, `second_index` (int64 [N]; equal distances list the lower index first),
    `quantiles` ({'nearest': {'p1': ...}, 'second': ...}), `median_nn`, `N`, `d` (C*H*W), `shape` ([C, H, W]),
    `num_distinct`, `duplicate_groups` (groups at distance exactly 0) and `near_duplicate_groups` (connected groups at
    distance < `near_duplicate_threshold` = NEAR_DUPLICATE_FRACTION x median_nn, exact duplicates included), each a
    list of sorted index lists of size >= 2.

    The search runs over the distinct images (k=3; an image's own copies are its neighbours at distance 0, then the
    copies of its nearest distinct images): the same result as searching every image against every other with self
    dropped, without the exhaustive fallback the certified search takes for groups of identical images larger than
    its candidate list.
    """
    images = _check_images(images)
    n = images.shape[0]
    flat = np.ascontiguousarray(images.reshape(n, -1))
    first, label = _distinct(flat)
    num = len(first)
    count = np.bincount(label, minlength=num)
    # Nearest and second-nearest other distinct image, by the certified search (the torch one: faiss's float32 bound
    # is looser). Distinct images are at distance > 0,
    # so each one's own index comes first; equal distances list the lower index, i.e. the earlier first occurrence.
    nbr_d = np.full([num, 2], np.inf)
    nbr_i = np.full([num, 2], -1, dtype=np.int64)
    if num >= 2:
        # Centred pixels are half-integers, exact in float32: the float32 candidate pass (or, on CPUs with native
        # bfloat16 and large sets, the bfloat16 one; both certified and rescored in fixed-order float64) ranks
        # faster than float64 and gives the same neighbours.
        keys = torch.from_numpy(flat[first]).to(torch.float64) - 127.5
        values, indices = nn_search.l2_topk(keys.to(torch.float32), keys, k=min(3, num),
                                            chunk=chunk or nn_search.DEFAULT_CHUNK, backend='torch', fast='auto')
        indices = indices.cpu().numpy()
        # The distances of the chosen pairs again, from the integer pixels (exact sums), rounded once by sqrt:
        # the search reports them in its ranking dtype.
        distinct = flat[first]
        values = np.empty(indices.shape, dtype=np.float64)
        for r in range(0, num, 4096): # Row blocks keep the int64 differences small (100k x 3072 would be 2.4 GB).
            a = distinct[r : r + 4096].astype(np.int64)
            for j in range(indices.shape[1]):
                values[r : r + 4096, j] = np.sqrt(np.square(a - distinct[indices[r : r + 4096, j]]).sum(axis=1))
        assert (indices[:, 0] == np.arange(num)).all() and (values[:, 0] == 0).all()
        nbr_d[:, : num - 1] = values[:, 1:3] / PIXEL_SCALE
        nbr_i[:, : num - 1] = indices[:, 1:3]
    # Each image's candidates, of which the two first by (distance, index) are the answer: the first two other copies
    # of itself (distance 0), and the first two copies of each of its two nearest distinct images.
    members = _first_members(label, count, 3)
    own = members[label]
    own = np.where(own == np.arange(n)[:, None], -1, own)
    own = np.take_along_axis(own, np.argsort(own < 0, axis=1, kind='stable')[:, :2], axis=1)
    parts_i, parts_d = [own], [np.where(own >= 0, 0.0, np.inf)]
    for j in range(2):
        v = nbr_i[label, j]
        cand = np.where(v[:, None] >= 0, members[np.maximum(v, 0)][:, :2], -1)
        parts_i.append(cand)
        parts_d.append(np.where(cand >= 0, nbr_d[label, j][:, None], np.inf))
    cand_i, cand_d = np.concatenate(parts_i, axis=1), np.concatenate(parts_d, axis=1)
    order = np.lexsort((np.where(cand_i >= 0, cand_i, n), cand_d), axis=1)[:, :2]
    dist, index = np.take_along_axis(cand_d, order, axis=1), np.take_along_axis(cand_i, order, axis=1)
    assert (index >= 0).all() and np.isfinite(dist).all()
    nearest, second = dist[:, 0], dist[:, 1]
    median = float(np.median(nearest))
    threshold = NEAR_DUPLICATE_FRACTION * median
    # Near duplicates: components of the distinct images joined below the threshold, then their copies. Every such
    # pair joins two distinct images whose nearest distinct image is closer than the threshold too, so the pairwise
    # pass over those candidates finds every edge, not only the top-2 lists' ones.
    candidates = np.flatnonzero(nbr_d[:, 0] < threshold)
    component = _components(num, *_close_pairs(flat[first], candidates, threshold))
    return dict(
        N=int(n), d=int(flat.shape[1]), shape=[int(s) for s in images.shape[1:]], num_distinct=int(num),
        units='pixel L2 distance, images scaled to [-1, 1]',
        nearest=nearest, second=second, nearest_index=index[:, 0], second_index=index[:, 1],
        quantiles=dict(nearest=quantiles(nearest), second=quantiles(second)),
        median_nn=median,
        near_duplicate_fraction=NEAR_DUPLICATE_FRACTION, near_duplicate_threshold=threshold,
        duplicate_groups=_groups(label, n), near_duplicate_groups=_groups(component[label], n),
    )


def measure_features(features, chunk=None):
    """The same scale in a feature space, searched as the memorization metric does (exact cosine, k=3, self dropped).

    features: float [N, D] (N >= 3). Returns a dict: `similarity`, `second_similarity` (cosine of the nearest and
    second-nearest other image), `nearest`, `second` (the matching distances between L2-normalised features,
    sqrt(2 - 2 cos)), `nearest_index`, `second_index`, their `quantiles`, `median_nn`, `median_similarity`, `N`, `d`.
    """
    features = torch.as_tensor(features)
    if features.ndim != 2 or features.shape[0] < MIN_IMAGES or features.shape[1] < 1:
        raise dnnlib.util.UserError(f'Features must be [N, D] with N >= {MIN_IMAGES}, got shape {list(features.shape)}')
    dnnlib.util.check_finite(features.detach().cpu().numpy(), 'Features')
    sims, indices = nn_search.cosine_topk(features, features, k=3, chunk=chunk or nn_search.DEFAULT_CHUNK)
    # Ascending order for drop_self's "first entries": descending similarity is ascending distance.
    sims, indices = drop_self(sims.cpu().numpy().astype(np.float64), indices.cpu().numpy())
    dist = np.sqrt(np.clip(2 - 2 * sims, 0, None))
    return dict(
        N=int(features.shape[0]), d=int(features.shape[1]),
        units='distance between L2-normalised features, sqrt(2 - 2 cos)',
        similarity=sims[:, 0], second_similarity=sims[:, 1], nearest=dist[:, 0], second=dist[:, 1],
        nearest_index=indices[:, 0].astype(np.int64), second_index=indices[:, 1].astype(np.int64),
        quantiles=dict(nearest=quantiles(dist[:, 0]), second=quantiles(dist[:, 1]), similarity=quantiles(sims[:, 0])),
        median_nn=float(np.median(dist[:, 0])), median_similarity=float(np.median(sims[:, 0])),
    )

#----------------------------------------------------------------------------
