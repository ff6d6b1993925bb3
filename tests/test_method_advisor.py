"""Tests of ambient/method/advisor.py: sigma_tn = c * m / sqrt(d), its range and sentence, and the per-image rule."""

import math
import re

import numpy as np
import pytest

import dnnlib
from ambient.method import advisor

R = advisor.RULE


def _scale(median=2.7, d=64, nearest=None, groups=()):
    nearest = np.full(10, median) if nearest is None else np.asarray(nearest, dtype=np.float64)
    return dict(median_nn=median, d=d, N=len(nearest), nearest=nearest, near_duplicate_groups=[list(g) for g in groups])


def test_rule_constants_live_in_one_dict():
    assert advisor.RULE == dict(lo=0.75, recommended=1.25, hi=2.5) # docs/advise.md calibrates these


@pytest.mark.parametrize('median, d, best, frontier, outside', [
    (2.70, 64, 0.5, [0.3, 0.5], [1.0]),       # digits, 100 images (docs/results.md): 1.0 stopped copying at a quality cost
    (11.4, 768, 0.45, [0.45, 0.6], []),       # CIFAR-10, 100 images at 16x16 (docs/results.md, "CIFAR-10")
])
def test_measured_best_sigma_lies_in_the_recommended_range(median, d, best, frontier, outside):
    r = advisor.recommend(_scale(median, d))
    lo, hi = r['range']
    assert lo <= best <= hi and all(lo <= s <= hi for s in frontier) and not any(lo <= s <= hi for s in outside)
    assert r['recommended'] == pytest.approx(best, rel=0.2) # The recommendation itself within 20% of the best.
    assert r['dim'] == d and r['median_nn'] == median and r['rule'] == advisor.RULE


@pytest.mark.parametrize('median, d', [(2.7, 64), (10.2, 768), (0.05, 3), (40.0, 3 * 64 * 64)])
def test_recommendation_scales_as_median_over_sqrt_d(median, d):
    r = advisor.recommend(_scale(median, d))
    unit = median / math.sqrt(d)
    assert r['per_sqrt_d'] == pytest.approx(unit)
    assert r['unrounded']['recommended'] == pytest.approx(R['recommended'] * unit)
    assert r['unrounded']['range'] == pytest.approx([R['lo'] * unit, R['hi'] * unit])
    # Rounded to two significant digits: within 5% of the exact values.
    assert r['recommended'] == pytest.approx(R['recommended'] * unit, rel=0.05)
    assert r['range'] == pytest.approx([R['lo'] * unit, R['hi'] * unit], rel=0.05)
    assert advisor.round_sig(r['recommended']) == r['recommended']
    # Twice the distance, twice sigma_tn; four times the dimension, half of it.
    assert advisor.recommend(_scale(2 * median, d))['unrounded']['recommended'] == pytest.approx(2 * R['recommended'] * unit)
    assert advisor.recommend(_scale(median, 4 * d))['unrounded']['recommended'] == pytest.approx(R['recommended'] * unit / 2)


def test_explanation_is_one_checkable_sentence():
    r = advisor.recommend(_scale(10.2, 768))
    text = r['explanation']
    assert text.replace('i.e. ', '').count('. ') == 0 and text.endswith('.') and '\n' not in text
    assert '10.2' in text and 'd=768' in text and f'sigma_tn = {advisor.fmt(r["recommended"])}' in text
    # The stated noise norm is sigma_tn * sqrt(d), and the stated multiple is that norm over the median distance.
    norm = float(re.search(r'sigma_tn\*sqrt\(d\) = ([0-9.]+)', text).group(1))
    assert norm == pytest.approx(r['recommended'] * math.sqrt(768), rel=0.01)
    multiple = float(re.search(r'\) is ([0-9.]+)x that distance', text).group(1))
    assert multiple == pytest.approx(norm / 10.2, rel=0.05)
    assert f"{R['lo']:g}x to {R['hi']:g}x" in text


def test_rounding_helpers():
    assert advisor.round_sig(0.50622) == 0.51 and advisor.round_sig(1234.5, 3) == 1230 and advisor.round_sig(0) == 0
    assert advisor.fmt(0.50622) == '0.51' and advisor.fmt(2.6999, 3) == '2.70' and advisor.fmt(1.0124) == '1.0'
    assert advisor.fmt(15.31, 3) == '15.3' and advisor.fmt(1234.5, 3) == '1230'


def test_per_image_grows_with_distance_and_group_size_and_is_clipped():
    median, d = 2.0, 16
    names = [f'img{i}.png' for i in range(6)]
    # Images 0-2 alone at growing distances; 3, 4 and 5 at the distance of image 1, in groups of 2 (3, 4) and 1 (5).
    scale = _scale(median, d, nearest=[1.6, 1.8, 2.2, 1.8, 1.8, 1.8], groups=[[3, 4]])
    s = advisor.per_image(scale, names)
    assert list(s) == names
    assert s['img0.png'] < s['img1.png'] < s['img2.png']
    assert s['img3.png'] == s['img4.png'] > s['img5.png'] == s['img1.png']
    unit = R['recommended'] / math.sqrt(d)
    assert s['img1.png'] == pytest.approx(unit * 1.8, rel=1e-3)
    # A group member's nearest image is its own copy: it starts from the median distance, raised by the group size.
    assert s['img3.png'] == pytest.approx(unit * median * (1 + math.log(2)), rel=1e-3)
    # Far outside the range: clipped to the recommended range of the median. Exact duplicates (0, 1) get more noise
    # than an isolated image at the median distance, not the least.
    lo, hi = advisor.recommend(scale)['range']
    extreme = advisor.per_image(_scale(median, d, nearest=[0.0, 0.0, 2.0, 50.0, 1e-3, 2.0], groups=[[0, 1]]), names)
    assert extreme['img0.png'] == extreme['img1.png'] > extreme['img2.png'] > lo
    assert extreme['img4.png'] == lo and extreme['img3.png'] == hi
    assert all(lo <= v <= hi for v in extreme.values())


@pytest.mark.parametrize('scale, names, rule, match', [
    (_scale(), [f'{i}' for i in range(9)], 'nn', 'one file name per image'),
    (_scale(), ['a'] * 10, 'nn', 'unique'),
    (_scale(), [f'{i}' for i in range(10)], 'bogus', 'Unknown per-image rule'),
    (_scale(nearest=[1.0] * 9 + [np.nan]), [f'{i}' for i in range(10)], 'nn', 'finite'),
    (_scale(groups=[[3, 12]]), [f'{i}' for i in range(10)], 'nn', 'only 10 images'),
])
def test_per_image_validates_its_inputs(scale, names, rule, match):
    with pytest.raises(dnnlib.util.UserError, match=match):
        advisor.per_image(scale, names, rule=rule)


@pytest.mark.parametrize('scale, match', [
    (dict(median_nn=1.0, N=5), 'lacks d'),
    (dict(median_nn=0.0, d=64, N=5), 'exact duplicate'),
    (dict(median_nn=float('nan'), d=64, N=5), 'finite'),
    (dict(median_nn=1.0, d=0, N=5), 'positive integer'),
    ([1, 2], 'distance scale dict'),
])
def test_recommend_refuses_bad_scales(scale, match):
    with pytest.raises(dnnlib.util.UserError, match=match):
        advisor.recommend(scale)
