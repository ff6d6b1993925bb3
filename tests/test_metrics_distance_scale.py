"""Tests of ambient/metrics/distance_scale.py: nearest / second-nearest other images on data with known distances,
exact and near duplicates, and the feature-space variant."""

import numpy as np
import pytest
import torch

import dnnlib
from ambient.metrics import distance_scale

S = distance_scale.PIXEL_SCALE


def _line(values, d=4):
    """Grey 1x1xd images, pixel 0 set to each value, the others 0: distances are |v_i - v_j| / 127.5."""
    images = np.zeros([len(values), 1, 1, d], dtype=np.uint8)
    images[:, 0, 0, 0] = values
    return images


def test_points_on_a_line_have_known_neighbours():
    # Gaps 10, 20, 30, 40: every nearest and second nearest is known; image 2 (at 30) has 0 and 60 both at 30, and
    # the tie goes to the lower index.
    s = distance_scale.measure(_line([0, 10, 30, 60, 100]))
    assert s['N'] == 5 and s['d'] == 4 and s['shape'] == [1, 1, 4]
    np.testing.assert_allclose(s['nearest'], np.array([10, 10, 20, 30, 40]) / S, rtol=0, atol=1e-12)
    np.testing.assert_allclose(s['second'], np.array([30, 20, 30, 40, 70]) / S, rtol=0, atol=1e-12)
    assert s['nearest_index'].tolist() == [1, 0, 1, 2, 3]
    assert s['second_index'].tolist() == [2, 2, 0, 4, 2]
    assert s['median_nn'] == pytest.approx(20 / S)
    q = s['quantiles']
    assert list(q['nearest']) == ['p1', 'p5', 'p10', 'p25', 'p50', 'p75', 'p90', 'p99']
    assert q['nearest']['p50'] == pytest.approx(20 / S) and q['second']['p50'] == pytest.approx(30 / S)
    assert q['nearest']['p1'] <= q['nearest']['p99'] <= 40 / S
    assert s['duplicate_groups'] == [] and s['near_duplicate_groups'] == []


def test_grid_of_points_in_two_pixels():
    # A 5x5 grid of spacing 12 in two pixels of 3x2x2 images: every image's nearest and second nearest are 12 away.
    images = np.zeros([25, 3, 2, 2], dtype=np.uint8)
    ij = np.array([(i, j) for i in range(5) for j in range(5)])
    images[:, 0, 0, 0] = 40 + 12 * ij[:, 0]
    images[:, 2, 1, 1] = 40 + 12 * ij[:, 1]
    s = distance_scale.measure(images)
    assert s['d'] == 12
    np.testing.assert_allclose(s['nearest'], 12 / S)
    np.testing.assert_allclose(s['second'], 12 / S)
    # Neighbours are grid neighbours, never the image itself.
    step = np.abs(ij[s['nearest_index']] - ij).sum(axis=1)
    assert (step == 1).all() and (s['nearest_index'] != np.arange(25)).all()
    assert (s['second_index'] != s['nearest_index']).all()


def test_exact_duplicates_are_neighbours_and_only_the_own_index_is_dropped():
    # Images 5..8 are one image four times: for image 8 the three nearest (5, 6, 7, all at 0) exclude itself.
    images = _line([0, 40, 80, 120, 160, 200, 200, 200, 200, 240])
    s = distance_scale.measure(images)
    assert s['nearest'][5:9].tolist() == [0, 0, 0, 0] and s['second'][5:9].tolist() == [0, 0, 0, 0]
    assert s['nearest_index'][5:9].tolist() == [6, 5, 5, 5]
    assert s['second_index'][5:9].tolist() == [7, 7, 6, 6]
    assert (s['nearest_index'] != np.arange(10)).all() and (s['second_index'] != np.arange(10)).all()
    assert s['duplicate_groups'] == [[5, 6, 7, 8]]
    assert s['near_duplicate_groups'] == [[5, 6, 7, 8]] # Exact duplicates are near duplicates too.
    assert s['nearest'][9] == pytest.approx(40 / S)


def test_near_duplicate_pair_and_chain():
    # 1x4x4 images with all 16 pixels at v: distances are 4 |v_i - v_j|. Thirteen images 20 apart in v (distance 80, the
    # median), a pair 1 apart (distance 4) and a chain 100-101-102-103 (4 per step, 12 end to end) under
    # 0.1 x 80 = 8: the chain is one group although its ends are farther apart than the threshold.
    values = list(range(0, 241, 20)) + [41, 101, 102, 103]
    images = np.repeat(np.array(values, dtype=np.uint8)[:, None, None, None], 4, axis=2).repeat(4, axis=3)
    s = distance_scale.measure(images)
    assert s['median_nn'] == pytest.approx(80 / S)
    assert s['near_duplicate_threshold'] == pytest.approx(distance_scale.NEAR_DUPLICATE_FRACTION * 80 / S)
    assert s['duplicate_groups'] == []
    assert s['near_duplicate_groups'] == [[2, 13], [5, 14, 15, 16]]
    assert s['nearest'][13] == pytest.approx(4 / S) and s['nearest_index'][13] == 2


def test_near_duplicate_groups_use_every_close_pair_not_only_the_top_two():
    # Two tight triples (0, 1, 2 and 20, 21, 22 in pixel 24) 18 apart, far from 16 one-hot images: the median is
    # 255 / 127.5, the threshold 25.5 / 127.5 joins the triples, though no image has the other triple in its top 2.
    images = np.zeros([22, 1, 5, 5], dtype=np.uint8)
    flat = images.reshape(22, -1)
    flat[np.arange(16), np.arange(16)] = 255
    flat[16:, 24] = [0, 1, 2, 20, 21, 22]
    s = distance_scale.measure(images)
    assert s['median_nn'] == pytest.approx(255 / S)
    assert s['near_duplicate_groups'] == [list(range(16, 22))]
    assert s['duplicate_groups'] == []


def test_chunk_size_does_not_change_the_result():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=[40, 3, 4, 4], dtype=np.uint8)
    images[7] = images[3]
    a, b = distance_scale.measure(images), distance_scale.measure(images, chunk=3)
    for key in ('nearest', 'second', 'nearest_index', 'second_index'):
        assert np.array_equal(a[key], b[key]), key
    assert a['duplicate_groups'] == b['duplicate_groups'] == [[3, 7]]


@pytest.mark.parametrize('images, match', [
    (np.zeros([2, 1, 4, 4], np.uint8), 'at least 3'),
    (np.zeros([5, 1, 4, 4], np.float32), 'uint8'),
    (np.zeros([5, 16], np.uint8), 'NCHW'),
])
def test_bad_images_are_refused(images, match):
    with pytest.raises(dnnlib.util.UserError, match=match):
        distance_scale.measure(images)


def test_feature_scale_is_cosine_with_self_dropped():
    angles = np.radians([0, 10, 30, 60, 100])
    feats = torch.tensor(np.stack([np.cos(angles), np.sin(angles)], axis=1) * [[1], [2], [3], [1], [5]], dtype=torch.float32)
    s = distance_scale.measure_features(feats)
    np.testing.assert_allclose(s['similarity'], np.cos(np.radians([10, 10, 20, 30, 40])), atol=1e-6)
    np.testing.assert_allclose(s['second_similarity'], np.cos(np.radians([30, 20, 30, 40, 70])), atol=1e-6)
    assert s['nearest_index'].tolist() == [1, 0, 1, 2, 3]
    np.testing.assert_allclose(s['nearest'], np.sqrt(2 - 2 * s['similarity']), atol=1e-12)
    assert s['median_similarity'] == pytest.approx(np.cos(np.radians(20)), abs=1e-6)
    with pytest.raises(dnnlib.util.UserError, match='N >= 3'):
        distance_scale.measure_features(feats[:2])


def _reference(images):
    """Every image against every other (self excluded), exact integer distances, ties to the lower index; and the
    groups of the full "distance 0" and "distance < threshold" graphs."""
    import scipy.sparse.csgraph # pylint: disable=import-outside-toplevel
    x = images.reshape(len(images), -1).astype(np.int64)
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
    dist = np.sqrt(d2.astype(np.float64)) / S
    n = len(x)
    np.fill_diagonal(dist, np.inf)
    order = np.lexsort((np.broadcast_to(np.arange(n), (n, n)), dist), axis=1)[:, :2]
    top = np.take_along_axis(dist, order, axis=1)
    median = np.median(top[:, 0])
    def groups(adjacency):
        labels = scipy.sparse.csgraph.connected_components(adjacency, directed=False)[1]
        out = [np.flatnonzero(labels == c).tolist() for c in np.unique(labels)]
        return sorted([g for g in out if len(g) >= 2], key=lambda g: g[0])
    np.fill_diagonal(d2, 1)
    return top, order, groups(d2 == 0), groups((d2 == 0) | (dist < 0.1 * median))


def test_same_result_as_searching_every_image_against_every_other():
    # Groups of 2, 3, 4 and 14 identical images (more than the search's candidate list), shuffled among distinct
    # images, a few near copies and chains of them.
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, size=[60, 3, 4, 4], dtype=np.uint8)
    images = np.concatenate([base, base[[0, 1, 1, 2, 2, 2]], np.repeat(base[3:4], 13, axis=0),
                             np.clip(base[10:16].astype(int) + rng.integers(-2, 3, size=[6, 3, 4, 4]), 0, 255).astype(np.uint8)])
    images[-1] = np.clip(images[-2].astype(int) + 1, 0, 255) # near copy of a near copy
    images = images[rng.permutation(len(images))]
    s = distance_scale.measure(images, chunk=7)
    top, order, dups, near = _reference(images)
    assert np.array_equal(s['nearest'], top[:, 0]) and np.array_equal(s['second'], top[:, 1])
    assert np.array_equal(s['nearest_index'], order[:, 0]) and np.array_equal(s['second_index'], order[:, 1])
    assert s['duplicate_groups'] == dups and sorted(len(g) for g in dups) == [2, 3, 4, 14]
    assert s['near_duplicate_groups'] == near and len(near) > len(dups)
    assert s["num_distinct"] == 66 # the 60 base images and the 6 near copies


@pytest.mark.parametrize('copies', [[5, 0, 0], [1, 3, 0], [2, 2, 0], [1, 1, 1]])
def test_few_distinct_images(copies):
    # 1, 2 or 3 distinct images, repeated: every image still gets two others.
    images = np.concatenate([np.full([c, 1, 2, 2], 50 * (j + 1), dtype=np.uint8) for j, c in enumerate(copies) if c])
    s = distance_scale.measure(images)
    top, order, dups, _ = _reference(images)
    assert np.array_equal(s['nearest'], top[:, 0]) and np.array_equal(s['second'], top[:, 1])
    assert np.array_equal(s['nearest_index'], order[:, 0]) and np.array_equal(s['second_index'], order[:, 1])
    assert s['duplicate_groups'] == dups
