"""Tests of ambient/experiments/pareto.py: the frontier on hand-made points, its staircase and the plots."""

import numpy as np
import PIL.Image
import pytest

from ambient.experiments import pareto

#----------------------------------------------------------------------------

def test_front_of_hand_made_points():
    #            0    1    2    3    4    5    6
    xs = np.array([1.0, 2.0, 3.0, 2.5, 4.0, 1.5, 5.0])
    ys = np.array([0.9, 0.5, 0.2, 0.6, 0.1, 0.95, 0.1])
    # 3 is dominated by 1 (2.0 <= 2.5, 0.5 <= 0.6); 5 by 0; 6 by 4 (equal y, larger x).
    assert pareto.pareto_front(xs, ys) == [0, 1, 2, 4]


def test_front_ties_duplicates_and_nans():
    # Same x: only the lower y survives. Identical points: the first one. NaN: never on the front.
    assert pareto.pareto_front([1, 1, 2], [0.5, 0.3, 0.1]) == [1, 2]
    assert pareto.pareto_front([1, 1], [0.5, 0.5]) == [0]
    assert pareto.pareto_front([np.nan, 2, 3], [0.0, 0.5, 0.6]) == [1]
    assert pareto.pareto_front([], []) == []
    with pytest.raises(ValueError):
        pareto.pareto_front([1, 2], [1])


def test_front_matches_brute_force_on_random_points():
    rng = np.random.RandomState(0)
    xs, ys = rng.randint(0, 8, size=60).astype(float), rng.randint(0, 8, size=60).astype(float)
    front = pareto.pareto_front(xs, ys)
    dominated = lambda i: any(xs[j] <= xs[i] and ys[j] <= ys[i] and (xs[j] < xs[i] or ys[j] < ys[i]) for j in range(60))
    expected_points = {(xs[i], ys[i]) for i in range(60) if not dominated(i)}
    assert {(xs[i], ys[i]) for i in front} == expected_points
    assert len(front) == len(expected_points) # One index per distinct frontier point.
    assert list(xs[front]) == sorted(xs[front])


def test_frontier_steps_is_a_staircase():
    xs, ys = [1.0, 2.0, 4.0], [0.9, 0.5, 0.1]
    sx, sy = pareto.frontier_steps(xs, ys, [0, 1, 2])
    np.testing.assert_array_equal(sx, [1, 2, 2, 4, 4])
    np.testing.assert_array_equal(sy, [0.9, 0.9, 0.5, 0.5, 0.1])


def test_plots_write_png_files(tmp_path):
    rows = [dict(sigma_tn=s, kimg=k, epochs=10 * k, fd=5.0 / k + s, mem=0.1 * k * (1 - s / 2))
            for s in (0.0, 1.0) for k in (1, 2, 3)]
    pareto.plot_pareto(rows, tmp_path / 'p.png', 'fd', 'mem')
    pareto.plot_curves(rows, tmp_path / 'c.png', 'epochs', [('mem', 'memorized'), ('fd', 'FD')], baselines=dict(mem=0.01))
    for name in ('p.png', 'c.png'):
        with PIL.Image.open(tmp_path / name) as im:
            assert im.format == 'PNG' and im.size[0] > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ['c.png', 'p.png'] # No temporary files left.

#----------------------------------------------------------------------------
