"""Tests of training/detectors.py: registry, preprocessing presets, local weights, offline errors."""

import importlib.util
import pickle
import sys
import textwrap

import pytest
import torch

import dnnlib
from training import detectors

#----------------------------------------------------------------------------
# A stand-in for NVIDIA's Inception pickle: a fixed module pickled with our persistence
# (its source travels in the pickle, as in the real file), called with return_features=True.

STANDIN_SRC = textwrap.dedent('''
    import torch
    from torch_utils import persistence

    @persistence.persistent_class
    class StandInDetector(torch.nn.Module):
        def __init__(self, feature_dim=8):
            super().__init__()
            self.feature_dim = feature_dim
            g = torch.Generator().manual_seed(123)
            self.register_buffer('proj', torch.randn([3 * 4 * 4, feature_dim], generator=g))

        def forward(self, x, return_features=False):
            assert return_features and x.dtype == torch.uint8 and x.shape[1] == 3
            x = torch.nn.functional.adaptive_avg_pool2d(x.to(torch.float32) / 255, 4)
            return torch.tanh(x.flatten(1) @ self.proj)
''')


def make_standin_pickle(tmp_path, feature_dim=8):
    """Write the stand-in detector's module, build it, and pickle it to tmp_path/standin.pkl."""
    src = tmp_path / 'standin_detector_module.py'
    src.write_text(STANDIN_SRC)
    spec = importlib.util.spec_from_file_location('standin_detector_module', src)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    path = tmp_path / 'standin.pkl'
    path.write_bytes(pickle.dumps(module.StandInDetector(feature_dim)))
    return path


def _images(n=4, c=3, res=16, seed=0):
    return torch.randint(0, 256, [n, c, res, res], dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))

#----------------------------------------------------------------------------

def test_inception_from_local_pickle_repeats_grey(tmp_path):
    det = detectors.load_detector('inception', path=str(make_standin_pickle(tmp_path)))
    assert det.name == 'inception' and det.feature_dim == 8
    grey = _images(c=1)
    feats = det(grey)
    assert feats.dtype == torch.float32 and feats.shape == (4, 8)
    torch.testing.assert_close(feats, det(grey.repeat(1, 3, 1, 1)))
    with pytest.raises(ValueError):
        det(grey.float())


def test_inception_offline_says_how_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.setattr(detectors, 'INCEPTION_URL', 'http://127.0.0.1:9/inception-2015-12-05.pkl') # Nothing listens there.
    monkeypatch.setattr(dnnlib.util.time, 'sleep', lambda s: None)
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    with pytest.raises(dnnlib.util.UserError) as info:
        detectors.load_detector('inception', verbose=False)
    assert '--detector=' in info.value.message and '\n' not in info.value.message
    (tmp_path / 'junk.pkl').write_bytes(b'junk')
    with pytest.raises(dnnlib.util.UserError):
        detectors.load_detector('inception', path=str(tmp_path / 'junk.pkl'))
    with pytest.raises(dnnlib.util.UserError):
        detectors.load_detector('inception', path=str(tmp_path / 'absent.pkl'))

#----------------------------------------------------------------------------

def test_ambient_preprocessing_pads_by_reflection():
    images = _images(n=2, res=10)
    x = detectors.preprocess_ambient(images)
    assert x.shape == (2, 3, 14, 14) and x.min() >= 0 and x.max() <= 1
    torch.testing.assert_close(x[:, :, 2:12, 2:12], images.float() / 255)
    torch.testing.assert_close(x[:, :, 2:12, 1], x[:, :, 2:12, 3]) # reflect: mirror without repeating the edge
    assert detectors.preprocess_ambient(_images(n=1, res=28)).shape[-1] == 28


def test_standard_preprocessing_resizes_and_normalises():
    white = torch.full([1, 3, 32, 32], 255, dtype=torch.uint8)
    x = detectors.preprocess_standard(white)
    assert x.shape == (1, 3, 224, 224)
    expected = (1 - torch.tensor(detectors.IMAGENET_MEAN)) / torch.tensor(detectors.IMAGENET_STD)
    torch.testing.assert_close(x.mean(dim=(2, 3))[0], expected)


HUBCONF = textwrap.dedent('''
    import torch

    class TinyViT(torch.nn.Module):
        embed_dim = 1024
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(3, 1024)
            self.seen = []
        def forward(self, x):
            self.seen.append(x.clone())
            return self.head(x.mean(dim=(2, 3)))

    def dinov2_vitl14(pretrained=True, **kwargs):
        torch.manual_seed(0)
        return TinyViT()
''')


def test_dinov2_from_local_hub_repo(tmp_path):
    (tmp_path / 'hubconf.py').write_text(HUBCONF)
    for preprocess, size in [('standard', 224), ('ambient', 28)]:
        det = detectors.load_detector('dinov2', path=str(tmp_path), arch='dinov2_vitl14', preprocess=preprocess)
        assert det.name == 'dinov2' and det.preprocess == preprocess and det.feature_dim == 1024
        feats = det(_images(n=2, c=1, res=16))
        assert feats.shape == (2, 1024) and feats.dtype == torch.float32
        assert det.model.seen[-1].shape == (2, 3, size, size)
    with pytest.raises(dnnlib.util.UserError):
        detectors.load_detector('dinov2', path=str(tmp_path), arch='dinov2_vitl14', preprocess='bogus')


def test_dinov2_not_in_hub_cache_is_refused_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'empty-torch-home'))
    monkeypatch.setattr(torch.hub, 'load', lambda *a, **k: pytest.fail('torch.hub must not be asked'))
    with pytest.raises(dnnlib.util.UserError, match='not in the torch hub cache') as info:
        detectors.load_detector('dinov2', option='--detector-path')
    assert '--detector-path=PATH' in info.value.message and '\n' not in info.value.message


def test_dinov2_errors(tmp_path):
    with pytest.raises(dnnlib.util.UserError) as info:
        detectors.load_detector('dinov2', path=str(tmp_path / 'absent.pth'))
    assert '--detector=' in info.value.message
    with pytest.raises(dnnlib.util.UserError):
        detectors.load_detector('dinov2', arch='dinov2_vitz99')

#----------------------------------------------------------------------------

def test_pixel_detector_is_centred_unit_norm_and_contrast_invariant():
    det = detectors.load_detector('pixel')
    images = _images(n=3, c=1, res=8)
    feats = det(images)
    assert feats.shape == (3, 64) and det.feature_dim == 64
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(feats.mean(dim=1), torch.zeros(3), atol=1e-6, rtol=0)
    # Halving the contrast around mid-grey keeps the direction: the features measure structure, not brightness.
    half = ((images.float() - 127.5) / 2 + 127.5).round().to(torch.uint8)
    cos = (det(half) * feats).sum(dim=1)
    assert (cos > 0.99).all()
    assert (feats[0] @ feats[1]).abs() < 0.5
    with pytest.raises(dnnlib.util.UserError):
        detectors.load_detector('pixel', path='x.pkl')


def test_unknown_detector():
    with pytest.raises(dnnlib.util.UserError):
        detectors.load_detector('clip')

#----------------------------------------------------------------------------
