"""Tests of ambient/metrics/stats.py: Wilson and bootstrap intervals cover what they should, and widen with seed spread."""

import numpy as np
import pytest

from ambient.metrics import stats

#----------------------------------------------------------------------------

def test_wilson_matches_known_values():
    # Textbook values (Newcombe 1998): 81/263 -> [0.2553, 0.3662]; 0/10 -> [0, 0.2775].
    lo, hi = stats.wilson(81, 263)
    assert lo == pytest.approx(0.2553, abs=1e-4) and hi == pytest.approx(0.3662, abs=1e-4)
    lo, hi = stats.wilson(0, 10)
    assert lo == 0 and hi == pytest.approx(0.2775, abs=1e-4)


def test_one_seed_is_wilson_and_seed_spread_widens_the_interval():
    flags = np.r_[np.ones(30), np.zeros(70)]
    one = stats.fraction_interval([flags])
    assert one['mean'] == pytest.approx(0.3) and (one['lo'], one['hi']) == pytest.approx(stats.wilson(30, 100))
    # Three seeds that agree vs three that disagree, same pooled mean: disagreement must widen the interval.
    agree = stats.fraction_interval([flags, flags, flags], seed=1)
    spread = stats.fraction_interval([np.r_[np.ones(5), np.zeros(95)], np.r_[np.ones(30), np.zeros(70)],
                                      np.r_[np.ones(55), np.zeros(45)]], seed=1)
    assert agree['mean'] == spread['mean'] == pytest.approx(0.3)
    assert (spread['hi'] - spread['lo']) > 2 * (agree['hi'] - agree['lo'])
    assert stats.fraction_interval([])['mean'] is None


def test_bootstrap_interval_covers_the_truth_at_about_its_level():
    rng = np.random.default_rng(0)
    hits = 0
    for trial in range(200):
        groups = [rng.random(200) < 0.2 for _ in range(3)]
        f = stats.fraction_interval(groups, seed=trial, reps=400)
        hits += f['lo'] <= 0.2 <= f['hi']
    assert 0.85 <= hits / 200 <= 1.0


def test_reduction_interval():
    base = [np.r_[np.ones(40), np.zeros(60)]] * 3
    new = [np.r_[np.ones(10), np.zeros(90)]] * 3
    r = stats.reduction_interval(base, new, seed=0, reps=1000)
    assert r['mean'] == pytest.approx(0.75) and r['lo'] < 0.75 < r['hi'] and r['lo'] > 0.5
    assert stats.reduction_interval([np.zeros(10)], new)['mean'] is None


def test_value_spread():
    v = stats.value_spread([1.0, 2.0, None, 3.0])
    assert v == dict(mean=2.0, std=1.0, min=1.0, max=3.0, n=3)
    assert stats.value_spread([None])['mean'] is None
