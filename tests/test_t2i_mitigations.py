"""Text-side mitigations (Somepalli et al. 2023, Wen et al. 2024), the Wen mask in the loss, and t2i data helpers."""

import numpy as np
import torch

from ambient.method.dataset import fixed_noise
from ambient.t2i import data as t2i_data
from ambient.t2i import loss as t2i_loss
from ambient.t2i import mitigations


def _ids():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 50, [64, 32], generator=g)
    ids[:, 0] = 0                # start token
    ids[:, 20:] = 1              # end / padding
    return ids


def test_replace_tokens():
    ids = _ids()
    assert torch.equal(mitigations.replace_tokens(ids, 0.0, 50, [0, 1]), ids)
    out = mitigations.replace_tokens(ids, 1.0, 50, [0, 1], torch.Generator().manual_seed(1))
    assert torch.equal(out[:, 0], ids[:, 0]) and torch.equal(out[:, 20:], ids[:, 20:]) # specials stay
    assert not torch.isin(out[:, 1:20], torch.tensor([0, 1])).any()                      # never a special id
    assert (out[:, 1:20] != ids[:, 1:20]).float().mean() > 0.9                             # ~all replaced (1/48 collide)
    out = mitigations.replace_tokens(ids, 0.3, 50, [0, 1], torch.Generator().manual_seed(2))
    frac = (out[:, 1:20] != ids[:, 1:20]).float().mean().item()
    assert abs(frac - 0.3 * 47 / 48) < 0.04
    again = mitigations.replace_tokens(ids, 0.3, 50, [0, 1], torch.Generator().manual_seed(2))
    assert torch.equal(out, again)


def test_noise_embeddings():
    emb = torch.randn([8, 77, 64])
    assert torch.equal(mitigations.noise_embeddings(emb, 0.0), emb)
    out = mitigations.noise_embeddings(emb, 0.5, torch.Generator().manual_seed(0))
    diff = out - emb
    assert abs(diff.mean().item()) < 0.01 and abs(diff.std().item() - 0.5) < 0.01


def test_wen_magnitude_and_mask_in_loss():
    eps_c = torch.zeros([4, 4, 8, 8])
    eps_u = torch.zeros([4, 4, 8, 8])
    eps_c[2] += 3.0                                      # one sample with an outlying text-conditional part
    eps_c[1] += 0.1
    mag = mitigations.noise_magnitude(eps_c, eps_u)
    torch.testing.assert_close(mag, torch.tensor([0.0, 0.1, 3.0, 0.0]))
    keep = mitigations.keep_mask(mag, 1.0)
    assert keep.tolist() == [True, True, False, True]
    assert mitigations.keep_mask(mag, None).all()
    # In the loss, a dropped sample contributes neither value nor gradient; the mean is over the kept ones.
    acp = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)
    g = torch.Generator().manual_seed(0)
    z0, n = torch.randn([4, 4, 8, 8], generator=g), torch.randn([4, 4, 8, 8], generator=g)
    batch = t2i_loss.prepare(z0, None, torch.tensor([10, 200, 500, 900]), n, acp, 0)
    pred = torch.randn([4, 4, 8, 8], generator=g, requires_grad=True)
    loss = t2i_loss.ambient_loss(pred, batch, 'epsilon', keep=keep)
    per_item = t2i_loss.per_item_loss(pred, batch, 'epsilon')
    torch.testing.assert_close(loss, per_item[keep].mean())
    loss.backward()
    assert pred.grad[2].abs().max() == 0 and pred.grad[0].abs().max() > 0


def test_batch_indices_and_fixed_noise():
    a = t2i_data.batch_indices(3, 0, 5, 7)
    b = t2i_data.batch_indices(3, 1, 5, 7)
    first_epoch = torch.cat([a, b])[:7]
    assert sorted(first_epoch.tolist()) == list(range(7))    # each epoch is a permutation
    assert torch.equal(a, t2i_data.batch_indices(3, 0, 5, 7)) # a pure function of (seed, step)
    assert not torch.equal(torch.cat([a, b]), t2i_data.batch_indices(4, 0, 10, 7))
    noise = t2i_data.tn_noise(5, [3, 0], (4, 2, 2))
    assert np.array_equal(noise[0].numpy(), fixed_noise(5, 3, (4, 2, 2)))
    assert np.array_equal(noise[1].numpy(), fixed_noise(5, 0, (4, 2, 2)))


def test_latent_cache_is_reused(tmp_path):
    from ambient.t2i import tiny
    folder = tiny.write_digits_folder(str(tmp_path / 'digits'), num_images=3, resolution=16)
    items = t2i_data.read_metadata(folder)
    assert items[0][1].startswith('a handwritten digit ')

    class FakeVAE: # Encodes by 2x average pooling; counts calls.
        calls = 0
        config = type('C', (), {'scaling_factor': 0.5})

        def encode(self, x):
            FakeVAE.calls += 1
            mode = torch.nn.functional.avg_pool2d(x, 2)
            return type('O', (), {'latent_dist': type('D', (), {'mode': lambda self: mode})()})()

    path = str(tmp_path / 'latents.safetensors')
    first = t2i_data.cached_latents(path, FakeVAE(), items, 'm', 16, 'cpu', log=lambda *_: None)
    calls = FakeVAE.calls
    second = t2i_data.cached_latents(path, FakeVAE(), items, 'm', 16, 'cpu', log=lambda *_: None)
    assert FakeVAE.calls == calls and torch.equal(first, second) and first.shape == (3, 3, 8, 8)
    t2i_data.cached_latents(path, FakeVAE(), items, 'other-model', 16, 'cpu', log=lambda *_: None)
    assert FakeVAE.calls > calls # A different key recomputes.
