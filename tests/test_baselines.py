"""The Table 2 baselines (masking, noisy-only) and ambient-safe augmentation: defining properties and tiny real runs."""

import glob
import os
import pickle
import sys

import numpy as np
import pytest
import torch

import dnnlib
from ambient.method import augment_policy
from ambient.baselines.loss import MaskingEDMLoss, NoisyOnlyEDMLoss
from ambient.baselines.config import (FixedMaskDataset, build_masked_precond, configure_masking, configure_noisy_only,
                                      fixed_mask)
from ambient.method.config import configure as configure_ambient
from ambient.method.loss import augment_pair

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_method_config import run as _run # pylint: disable=wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EDM_AUGMENT = dict(class_name='training.augment.AugmentPipe', p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1,
                   aniso=1, translate_frac=1)  # train.py's --augment pipe


def tiny_masked_net(channels=1, res=8, **kwargs):
    torch.manual_seed(0)
    return build_masked_precond(img_resolution=res, img_channels=channels, model_type='SongUNet', model_channels=16,
                                channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], dropout=0, **kwargs)


def tiny_net(channels=1, res=8):
    from training.networks import EDMPrecond
    torch.manual_seed(0)
    return EDMPrecond(img_resolution=res, img_channels=channels, model_type='SongUNet', model_channels=16,
                      channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], dropout=0)


def base_config(augment=False):
    c = dnnlib.EasyDict(
        dataset_kwargs=dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path='x.zip', use_labels=False,
                                       xflip=False, cache=True),
        network_kwargs=dnnlib.EasyDict(class_name='training.networks.EDMPrecond', model_type='SongUNet'),
        loss_kwargs=dnnlib.EasyDict(class_name='training.loss.EDMLoss'))
    if augment:
        c.augment_kwargs = dnnlib.EasyDict(EDM_AUGMENT)
        c.network_kwargs.augment_dim = 9
    return c

#----------------------------------------------------------------------------
# Masking.

def test_fixed_mask_is_a_pure_function_of_seed_and_index():
    a = fixed_mask(3, 17, 32, 0.3)
    assert a.shape == (1, 32, 32) and a.dtype == np.float32 and set(np.unique(a)) <= {0.0, 1.0}
    np.testing.assert_array_equal(a, fixed_mask(3, 17, 32, 0.3))
    assert not np.array_equal(a, fixed_mask(3, 18, 32, 0.3)) and not np.array_equal(a, fixed_mask(4, 17, 32, 0.3))
    assert abs(fixed_mask(0, 0, 256, 0.3).mean() - 0.7) < 0.01


def test_masking_loss_never_reads_a_pixel_that_A_erased():
    net = tiny_masked_net(mask_p=0.5, mask_delta=0.2)
    loss_fn = MaskingEDMLoss(mask_delta=0.2)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand([6, 1, 8, 8], generator=g) * 2 - 1
    A = (torch.rand([6, 1, 8, 8], generator=g) >= 0.5).float()
    other = torch.where(A > 0, x0, torch.rand([6, 1, 8, 8], generator=g) * 10 - 5)  # erased pixels changed
    pipe = dnnlib.util.construct_class_by_name(class_name='training.augment.AugmentPipe', p=1, xflip=1, yflip=1, translate_int=1)
    net_aug = build_masked_precond(img_resolution=8, img_channels=1, model_type='SongUNet', model_channels=16,
                                   channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], dropout=0, augment_dim=4)
    for model, aug in ((net, None), (net_aug, pipe)):
        results = []
        for images in (x0, other):
            images = images.clone().requires_grad_(True)
            torch.manual_seed(5)
            loss = loss_fn(model, images, augment_pipe=aug, mask=A)
            loss.sum().backward()
            results.append((loss.detach(), images.grad))
        torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
        assert torch.all(results[0][1][A == 0] == 0) and results[0][1][A == 1].abs().sum() > 0
        assert torch.all(results[0][0][(A == 0).expand_as(results[0][0])] == 0) if aug is None else True


def test_masked_network_sees_only_kept_pixels_and_the_mask():
    net = tiny_masked_net().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn([4, 1, 8, 8], generator=g)
    mask = (torch.rand([4, 1, 8, 8], generator=g) > 0.3).float()
    sigma = torch.full([4], 0.7)
    d1 = net(x, sigma, mask=mask)
    d2 = net(torch.where(mask > 0, x, x + 100), sigma, mask=mask)
    torch.testing.assert_close(d1, d2, rtol=0, atol=0)
    assert d1.shape == x.shape and net.inner.img_channels == 2
    assert not torch.allclose(d1, net(x, sigma, mask=torch.ones_like(mask)))


def test_masked_network_samples_without_a_mask_and_pickles():
    from training.sampler import edm_sampler
    net = tiny_masked_net(mask_p=0.2, mask_delta=0.1, sample_masks=3).eval()
    x, sigma = torch.randn([2, 1, 8, 8]), torch.full([2], 2.0)
    state = torch.random.get_rng_state()
    d = net(x, sigma)
    assert torch.equal(state, torch.random.get_rng_state())  # no global RNG
    torch.testing.assert_close(d, net(x, sigma))  # the same masks at every call
    clone = pickle.loads(pickle.dumps(net))
    torch.testing.assert_close(clone(x, sigma), d)
    out = edm_sampler(net, torch.randn([2, 1, 8, 8]), num_steps=3)
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()


def test_configure_masking_keeps_edm_untouched_and_builds_everything(tmp_path):
    c = base_config(augment=True)
    tag = configure_masking(c, dnnlib.EasyDict(mask_p=0.2, mask_delta=0.1))
    assert tag == 'masking-p0.2-d0.1'
    assert c.network_kwargs.class_name == 'ambient.baselines.config.build_masked_precond'
    assert c.network_kwargs.inner_class_name == 'training.networks.EDMPrecond'
    assert c.dataset_kwargs.class_name == 'ambient.baselines.config.FixedMaskDataset' and c.dataset_kwargs.path == 'x.zip'
    assert set(k for k, v in c.augment_kwargs.items() if k not in ('class_name', 'p', 'translate_int_max') and v) == {'xflip', 'yflip', 'translate_int'}
    assert c.network_kwargs.augment_dim == 4
    for bad, msg in ((dict(), 'requires --mask_p'), (dict(mask_p=0.2, sigma_tn=1.0), 'does not apply'),
                     (dict(mask_p=1.5), 'probability')):
        with pytest.raises(dnnlib.util.UserError, match=msg):
            configure_masking(base_config(), dnnlib.EasyDict(bad))
    # Masking off: the plain EDM network is an EDMPrecond with EDM's channels (no wrapper, no extra channel).
    assert tiny_net().model.enc['8x8_conv'].weight.shape[1] == 1


def test_fixed_mask_dataset_yields_the_mask(tmp_path):
    import PIL.Image
    for i in range(4):
        PIL.Image.fromarray(np.full([8, 8, 3], 40 * i, dtype=np.uint8)).save(tmp_path / f'{i}.png')
    ds = FixedMaskDataset(path=str(tmp_path), mask_p=0.4, mask_seed=2, xflip=True)
    image, _label, extra = ds[5]  # an x-flipped copy of raw image 1
    np.testing.assert_array_equal(extra['mask'], fixed_mask(2, 1, 8, 0.4)[:, :, ::-1])
    assert image.shape == (3, 8, 8) and len(ds) == 8

#----------------------------------------------------------------------------
# Noisy only.

class Spy(torch.nn.Module):
    """A tiny real denoiser that records every input it is given."""

    def __init__(self):
        super().__init__()
        self.net = tiny_net()
        self.inputs = []

    def forward(self, x, sigma, labels=None, augment_labels=None):
        self.inputs.append(x.detach().clone())
        return self.net(x, sigma, labels)


def test_noisy_only_loss_never_reads_x0():
    torch.manual_seed(0)
    x0, eps = torch.rand([8, 1, 8, 8]) * 2 - 1, torch.randn([8, 1, 8, 8])
    d = torch.randn([8, 1, 8, 8])
    loss_fn = NoisyOnlyEDMLoss(sigma_tn=0.5)
    outs = []
    for images, noise in ((x0, eps), (x0 + d, eps - d / 0.5)):  # other clean images, same noisy copies
        spy = Spy()
        torch.manual_seed(3)
        outs.append((loss_fn(spy, images, tn_noise=noise), spy.inputs))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # Both regimes occur in this batch (EDM's sigma draw with sigma_tn = 0.5).
    torch.manual_seed(3)
    sigma = (torch.randn([8, 1, 1, 1]) * 1.2 - 1.2).exp()
    assert (sigma >= 0.5).any() and (sigma < 0.5).any()


def test_noisy_only_high_regime_is_ambient_and_low_regime_starts_from_x_tn():
    torch.manual_seed(0)
    x0, eps = torch.rand([16, 1, 8, 8]) * 2 - 1, torch.randn([16, 1, 8, 8])
    spy = Spy()
    torch.manual_seed(1)
    NoisyOnlyEDMLoss(sigma_tn=0.5)(spy, x0, tn_noise=eps)
    first, both = spy.inputs
    torch.testing.assert_close(first, x0 + 0.5 * eps)  # the consistency anchor D(x_tn, sigma_tn)
    assert both.shape[0] == 32


def test_configure_noisy_only():
    c = base_config(augment=True)
    tag = configure_noisy_only(c, dnnlib.EasyDict(sigma_tn=0.5, noise_seed=3))
    assert tag == 'noisy_only-tn0.5'
    assert c.loss_kwargs == dict(class_name='ambient.baselines.loss.NoisyOnlyEDMLoss', sigma_tn=0.5)
    assert c.dataset_kwargs.class_name == 'ambient.method.dataset.NoisyCopyDataset' and c.dataset_kwargs.noise_seed == 3
    assert not c.augment_kwargs.get('scale') and c.network_kwargs.augment_dim == 4
    with pytest.raises(dnnlib.util.UserError, match='requires --sigma_tn'):
        configure_noisy_only(base_config(), dnnlib.EasyDict())
    with pytest.raises(dnnlib.util.UserError, match='does not apply'):
        configure_noisy_only(base_config(), dnnlib.EasyDict(sigma_tn=0.5, mask_p=0.1))

#----------------------------------------------------------------------------
# Ambient-safe augmentation.

def _noise_stats(augment_kwargs, sigma_tn=1.0, n=512, res=32):
    pipe = dnnlib.util.construct_class_by_name(**augment_kwargs)
    torch.manual_seed(0)
    images = torch.zeros([n, 3, res, res])
    noise = torch.randn([n, 3, res, res]) * sigma_tn
    _clean, noisy, _labels = augment_pair(images, noise, pipe)
    var = noisy.var().item() / sigma_tn ** 2
    corr = max(abs(torch.corrcoef(torch.stack([noisy[..., :, 1:].flatten(), noisy[..., :, :-1].flatten()]))[0, 1].item()),
               abs(torch.corrcoef(torch.stack([noisy[..., 1:, :].flatten(), noisy[..., :-1, :].flatten()]))[0, 1].item()))
    return var, corr


def test_ambient_default_augmentation_keeps_the_fixed_noise_white():
    c = base_config(augment=True)
    c.augment_kwargs.p = 1  # every item augmented: the strongest check
    configure_ambient(c, dnnlib.EasyDict(sigma_tn=1.0))
    assert all(not c.augment_kwargs.get(op) for op in augment_policy.RESAMPLING)
    assert c.augment_kwargs.translate_int > 0 and c.network_kwargs.augment_dim == 4
    var, corr = _noise_stats(c.augment_kwargs)
    assert abs(var - 1) < 0.02 and corr < 0.02
    # EDM's full set stays available, and it is what low-passes the noise.
    full = base_config(augment=True)
    full.augment_kwargs.p = 1
    tag = configure_ambient(full, dnnlib.EasyDict(sigma_tn=1.0, ambient_augment='edm'))
    assert tag.endswith('-augedm') and full.augment_kwargs == dict(EDM_AUGMENT, p=1) and full.network_kwargs.augment_dim == 9
    var_edm, corr_edm = _noise_stats(full.augment_kwargs)
    assert var_edm < 0.9 and corr_edm > 0.1


def test_edm_run_keeps_edms_augmentation(tmp_path):
    sys.path.insert(0, REPO)
    import train
    import PIL.Image
    for i in range(4):
        PIL.Image.fromarray(np.full([8, 8, 3], 40 * i, dtype=np.uint8)).save(tmp_path / f'{i}.png')
    for loss, extra, aug in (('edm', {}, dict(EDM_AUGMENT)), ('ambient', dict(sigma_tn=0.5), None)):
        ctx = train.main.make_context('train', ['--outdir', str(tmp_path / 'o'), '--data', str(tmp_path), f'--loss={loss}',
                                                '--cbase=16', '--cres=1'] + [f'--{k}={v}' for k, v in extra.items()])
        c, _desc, _state = train.build_config(dnnlib.EasyDict(ctx.params))
        if aug is not None:
            assert c.augment_kwargs == aug and c.network_kwargs.augment_dim == 9
        else:
            assert not c.augment_kwargs.get('scale') and c.network_kwargs.augment_dim == 4

#----------------------------------------------------------------------------
# Real training runs (tiny nets, few steps) through train.py and generate.py.

@pytest.fixture(scope='module')
def flat_data(tmp_path_factory):
    import PIL.Image
    data = tmp_path_factory.mktemp('flat')
    rng = np.random.default_rng(0)
    for i in range(16):
        PIL.Image.fromarray(np.tile(rng.integers(0, 256, size=[1, 1, 3], dtype=np.uint8), [8, 8, 1])).save(data / f'{i:02d}.png')
    return data


def _denoising_error(snapshot_path, key):
    """Clean-prediction error of the snapshot's EMA at sigma = 1 and 2 on the training images (fixed noise)."""
    with open(snapshot_path, 'rb') as f:
        snap = pickle.load(f)
    dataset = dnnlib.util.construct_class_by_name(**snap['dataset_kwargs'])
    items = [dataset[i] for i in range(len(dataset))]
    assert all(key in it[2] for it in items)
    images = torch.as_tensor(np.stack([it[0] for it in items])).float() / 127.5 - 1
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        errors = [(snap['ema'](images + s * torch.randn(images.shape, generator=g), torch.full([len(images)], s)) - images)
                  .square().mean().item() for s in (1.0, 2.0)]
    return float(np.mean(errors)), snap


@pytest.mark.slow
@pytest.mark.parametrize('family, args, key', [
    ('masking', ['--mask_p=0.3', '--mask_delta=0.1'], 'mask'),
    ('noisy_only', ['--sigma_tn=0.5'], 'tn_noise'),
])
def test_tiny_training_run(tmp_path, flat_data, family, args, key):
    outdir = tmp_path / 'runs'
    common = ['--outdir', str(outdir), '--data', str(flat_data), f'--loss={family}', '--cbase=16', '--cres=1',
              '--batch=32', '--tick=1', '--snap=1', '--dump=100', '--seed=1', '--ema=0.001', '--dropout=0', '--lr=30']
    _run(['train.py', '--duration=0.002'] + args + common)
    run_dir, = glob.glob(str(outdir / f'*-{family}-*'))
    snaps = sorted(glob.glob(os.path.join(run_dir, 'network-snapshot-*.pkl')))
    first, _ = _denoising_error(snaps[0], key)
    last, snap = _denoising_error(snaps[-1], key)
    assert last < 0.8 * first
    if family == 'masking':
        assert isinstance(snap['ema'], torch.nn.Module) and snap['ema'].inner.img_channels == 4
        assert not glob.glob(os.path.join(run_dir, '*.safetensors'))
    _run(['generate.py', '--network', snaps[-1], '--outdir', str(tmp_path / 'gen'), '--seeds=0-1', '--steps=4'])
    assert sorted(os.listdir(tmp_path / 'gen')) == ['000000.png', '000001.png']
