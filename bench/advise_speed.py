"""Speed of the advisor's distance scale (ambient.metrics.distance_scale.measure) on N synthetic 3x32x32 images."""

import os
import sys
import time

import click
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) # run as a script from anywhere
from ambient.metrics import distance_scale # pylint: disable=wrong-import-position
from torch_utils import cpu_features # pylint: disable=wrong-import-position


def synthetic_images(n, resolution=32, seed=0):
    """uint8 [n, 3, R, R]: smooth random images (a 4x4 random field upsampled) plus pixel noise, no two alike."""
    rng = np.random.default_rng(seed)
    out = np.empty([n, 3, resolution, resolution], dtype=np.uint8)
    for i in range(0, n, 4096):
        m = min(4096, n - i)
        coarse = torch.from_numpy(rng.uniform(0, 255, size=[m, 3, 4, 4]).astype(np.float32))
        smooth = torch.nn.functional.interpolate(coarse, size=(resolution, resolution), mode='bilinear', align_corners=False)
        noisy = smooth.numpy() + rng.normal(0, 8, size=smooth.shape)
        out[i : i + m] = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    return out


@click.command()
@click.option('--num', help='Images', type=click.IntRange(min=3), default=100_000, show_default=True)
@click.option('--resolution', help='Image side', type=click.IntRange(min=2), default=32, show_default=True)
def main(num, resolution):
    """Time one distance-scale measurement (nearest and second-nearest other image of every image)."""
    print(cpu_features.describe())
    images = synthetic_images(num, resolution)
    start = time.perf_counter()
    scale = distance_scale.measure(images)
    seconds = time.perf_counter() - start
    print(f'{num} images of 3x{resolution}x{resolution}: {seconds:.1f} s ({seconds / 60:.1f} min); median nearest '
          f'distance {scale["median_nn"]:.3f}, {len(scale["near_duplicate_groups"])} near-duplicate groups')


if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter
