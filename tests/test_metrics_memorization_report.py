"""Tests of ambient/metrics/memorization_report.py: the nearest-neighbour grid puts each pair where it says."""

import numpy as np
import torch

from ambient.metrics import memorization_report

#----------------------------------------------------------------------------

def test_nearest_grid_places_pairs():
    samples = torch.randint(0, 256, [3, 3, 8, 8], dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    train = torch.randint(0, 256, [5, 3, 8, 8], dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    grid, boxes = memorization_report.nearest_grid(samples, train, [2, 0], [4, 1], labels=['a', 'b'], columns=1)
    assert len(boxes) == 2
    for (s, t), ((sy, sx), (ty, tx), (h, w)) in zip([(2, 4), (0, 1)], boxes):
        assert h == 64 and w == 64
        np.testing.assert_array_equal(grid[sy : sy + h : 8, sx : sx + w : 8], samples[s].permute(1, 2, 0).numpy())
        np.testing.assert_array_equal(grid[ty : ty + h : 8, tx : tx + w : 8], train[t].permute(1, 2, 0).numpy())
