"""Tests of bench/edm_reference.py, the benchmarks' yardstick: it must be EDM, so our default paths must equal it bit for bit."""

import pathlib
import sys

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'bench'))

import edm_reference # pylint: disable=wrong-import-position
from training import checkpoint, sampler, training_loop # pylint: disable=wrong-import-position

from test_training_loop import make_image_zip, tiny_config # pylint: disable=wrong-import-position

#----------------------------------------------------------------------------

def _setup(c, **kwargs):
    checkpoint.seed_rank(c['seed'])
    return training_loop.setup_training(c['dataset_kwargs'], c['data_loader_kwargs'], c['network_kwargs'], c['loss_kwargs'],
                                        c['optimizer_kwargs'], c['augment_kwargs'], c['seed'], c['batch_size'],
                                        c['batch_gpu'], torch.device('cpu'), **kwargs)


def _train(c, steps, edm):
    """Weights of net and EMA after `steps` steps of EDM's reference step or of our loop's train_step."""
    t = _setup(c)
    opt = dict(lr_rampup_kimg=c['lr_rampup_kimg'], ema_halflife_kimg=c['ema_halflife_kimg'], ema_rampup_ratio=c['ema_rampup_ratio'])
    if edm:
        step = edm_reference.edm_train_step_fn(t, lr=c['optimizer_kwargs']['lr'], ddp=False, **opt)
        for _ in range(steps):
            step()
    else:
        for i in range(steps):
            training_loop.train_step(t, i * c['batch_size'], **opt)
    return [p.detach().clone() for p in list(t.net.parameters()) + list(t.ema.parameters())]


def test_our_training_step_is_edms_to_the_bit(tmp_path):
    # Dropout, augmentation, gradient accumulation (batch_gpu 4 of 8), lr ramp and EMA ramp all in play.
    c = tiny_config(make_image_zip(tmp_path / 'data.zip'), tmp_path)
    ours, edm = _train(c, 3, edm=False), _train(c, 3, edm=True)
    assert all(torch.equal(a, b) for a, b in zip(ours, edm))


def test_our_sampler_is_edms_to_the_bit(make_tiny_cond_net):
    net = make_tiny_cond_net()
    seeds = [5, 0, 123456789]
    ours = sampler.sample_batch(net, seeds, device='cpu', num_steps=5).numpy()
    edm = edm_reference.edm_sample_batch(net, seeds, torch.device('cpu'), num_steps=5)
    assert ours.dtype == edm.dtype and (ours == edm).all()


def test_fused_optimizer_changes_rounding_only(tmp_path):
    c = tiny_config(make_image_zip(tmp_path / 'data.zip'), tmp_path)
    exact = _train(c, 2, edm=False)
    c['optimizer_kwargs'] = dict(c['optimizer_kwargs'], fused=True)
    fast = _train(c, 2, edm=False)
    diff = max(float((a - b).abs().max()) for a, b in zip(exact, fast))
    assert 0 < diff < 1e-6 # The same gradients; only the Adam arithmetic is ordered differently.


def _gradients(c, **kwargs):
    t = _setup(c, **kwargs)
    assert bool(training_loop.accumulate_gradients(t))
    return torch.cat([p.grad.flatten() for p in t.net.parameters()])


@pytest.mark.parametrize('option,min_cosine', [('channels_last', 1 - 1e-6), ('bf16', 0.99), ('bf16+channels_last', 0.99),
                                               pytest.param('compile', 1 - 1e-6, marks=pytest.mark.slow)]) # compile: ~60 s cold
def test_fast_training_paths_give_the_exact_gradients_up_to_precision(tmp_path, option, min_cosine):
    # Dropout and augmentation draw the same numbers on every path, so the gradients are comparable one to one.
    c = tiny_config(make_image_zip(tmp_path / 'data.zip'), tmp_path)
    exact, fast = _gradients(c), _gradients(c, **{name: True for name in option.split('+')})
    if option != 'compile': # Compiled kernels may happen to round alike.
        assert not torch.equal(exact, fast) # The path is really in use.
    assert torch.nn.functional.cosine_similarity(exact, fast, dim=0) > min_cosine
    assert (fast.norm() / exact.norm() - 1).abs() < 1 - min_cosine + 1e-3
