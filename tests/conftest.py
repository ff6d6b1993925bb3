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
