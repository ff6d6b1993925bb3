"""Shared fixtures: locations of the ../shared fixtures, skipped where ../shared is absent."""

import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

def _shared_path():
    env = os.environ.get('AMBIENT_SHARED_DIR')
    return pathlib.Path(env) if env else REPO.parent / 'shared'

@pytest.fixture(scope='session')
def repo_dir():
    """The project root."""
    return REPO

@pytest.fixture(scope='session')
def shared_dir():
    """../shared beside the checkout (real CIFAR-10 fixtures, goldens); skips the test where it is absent."""
    path = _shared_path()
    if not path.is_dir():
        pytest.skip(f'{path} not present (fresh clone without ../shared)')
    return path

@pytest.fixture(scope='session')
def golden_dir(shared_dir):
    """../shared/golden: reference tensors produced by NVIDIA's EDM."""
    path = shared_dir / 'golden'
    if not path.is_dir():
        pytest.skip(f'{path} not present')
    return path

@pytest.fixture(scope='session')
def cifar_dir(shared_dir):
    """../shared/data/cifar10-mini: 2000 real CIFAR-10 training images as tarball and PNGs."""
    path = shared_dir / 'data' / 'cifar10-mini'
    if not path.is_dir():
        pytest.skip(f'{path} not present')
    return path

def _build_tiny_cond_net():
    import torch # pylint: disable=import-outside-toplevel
    from training import networks # pylint: disable=import-outside-toplevel
    torch.manual_seed(0)
    net = networks.EDMPrecond(img_resolution=8, img_channels=1, label_dim=3, model_type='SongUNet', model_channels=16,
                              channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.eval().requires_grad_(False)

@pytest.fixture(scope='session')
def make_tiny_cond_net():
    """Builder of a fresh tiny conditional grey 8x8 EDMPrecond (3 classes), weights perturbed so every layer matters."""
    return _build_tiny_cond_net

@pytest.fixture
def image_dirs(tmp_path):
    """Two folders of 12 RGB 16x16 PNGs: smooth random images, and the same darkened."""
    import numpy as np # pylint: disable=import-outside-toplevel
    import PIL.Image # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 255, size=[12, 4, 4, 3])
    dirs = {}
    for name, scale in [('a', 1.0), ('b', 0.4)]:
        d = tmp_path / name
        d.mkdir()
        for i, im in enumerate(base):
            big = np.kron(im * scale, np.ones([4, 4, 1])).astype(np.uint8)
            PIL.Image.fromarray(big, 'RGB').save(d / f'{i:06d}.png')
        dirs[name] = d
    return dirs
