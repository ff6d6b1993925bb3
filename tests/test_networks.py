"""Tests for training/networks.py: EDM golden outputs, EDM module trees, preconditioner formulas, pickling."""

import os
import pickle
import subprocess
import sys

import pytest
import torch

from training import networks

TOL = dict(rtol=1e-5, atol=1e-5)


def _load(path):
    return torch.load(path, weights_only=True)


def _golden_net(golden):
    """EDM network of a golden file, with its stored (perturbed) weights, in eval mode."""
    net = getattr(networks, golden['class_name'])(**golden['kwargs'])
    net.load_state_dict(golden['state_dict'], strict=True)
    return net.eval()


# ---------------------------------------------------------------- golden outputs

def test_ddpmpp_uncond_matches_edm(golden_dir):
    g = _load(golden_dir / 'precond_ddpmpp_uncond.pt')
    net = _golden_net(g)
    with torch.no_grad():
        out = net(g['x'], g['sigma'])
        out_scalar = net(g['x'], g['sigma_scalar'])
    assert out.dtype == torch.float32 and out.shape == g['output'].shape
    assert torch.allclose(out, g['output'], **TOL)
    assert torch.allclose(out_scalar, g['output_scalar_sigma'], **TOL)


def test_ddpmpp_cond_matches_edm(golden_dir):
    g = _load(golden_dir / 'precond_ddpmpp_cond.pt')
    net = _golden_net(g)
    with torch.no_grad():
        out = net(g['x'], g['sigma'], g['class_labels'], augment_labels=g['augment_labels'])
        out_no_aug = net(g['x'], g['sigma'], g['class_labels'])
        out_no_labels = net(g['x'], g['sigma'], None)
    assert torch.allclose(out, g['output'], **TOL)
    assert torch.allclose(out_no_aug, g['output_no_augment'], **TOL)
    assert torch.allclose(out_no_labels, g['output_no_labels'], **TOL)


@pytest.mark.parametrize('call', [0, 1, 16, 33, 34])
def test_sampler_network_calls_match_edm(golden_dir, call):
    s = _load(golden_dir / 'sampler_edm_heun.pt')
    net = _golden_net(_load(golden_dir / s['network_file']))
    with torch.no_grad():
        out = net(s['call_x'][call], s['call_sigma'][call])  # float64 batch, 0-dim float64 sigma
    assert out.dtype == torch.float32
    assert torch.allclose(out, s['call_denoised'][call], **TOL)


@pytest.mark.parametrize('name', ['precond_ddpmpp_uncond.pt', 'precond_ddpmpp_cond.pt'])
def test_initialisation_matches_edm(golden_dir, name):
    """Same seed, same initial weights: re-apply the documented perturbation and compare bit for bit."""
    g = _load(golden_dir / name)
    torch.manual_seed(g['init_seed'])
    net = getattr(networks, g['class_name'])(**g['kwargs'])
    gen = torch.Generator().manual_seed(g['perturb_seed'])
    expected = dict(net.state_dict())
    for key, p in net.named_parameters():
        expected[key] = p.detach() + g['perturb_std'] * torch.randn(p.shape, generator=gen)
    assert expected.keys() == g['state_dict'].keys()
    for key, value in expected.items():
        assert torch.equal(value, g['state_dict'][key]), key


# ---------------------------------------------------------------- module trees (keys written down from EDM's code)

def _unet_block(prefix, skip=None, attn=False, resample=False):
    """State-dict keys of one EDM UNetBlock; skip is None, 'conv', 'filter' (weightless) or 'conv+filter'."""
    keys = {f'{prefix}.{m}.{p}' for m in ('norm0', 'conv0', 'affine', 'norm1', 'conv1') for p in ('weight', 'bias')}
    if resample:
        keys.add(f'{prefix}.conv0.resample_filter')
    if skip in ('conv', 'conv+filter'):
        keys |= {f'{prefix}.skip.weight', f'{prefix}.skip.bias'}
    if skip in ('filter', 'conv+filter'):
        keys.add(f'{prefix}.skip.resample_filter')
    if attn:
        keys |= {f'{prefix}.{m}.{p}' for m in ('norm2', 'qkv', 'proj') for p in ('weight', 'bias')}
    return keys


def _wb(*names):
    return {f'{n}.{p}' for n in names for p in ('weight', 'bias')}


def _prefixed(keys):
    return {f'model.{k}' for k in keys}


NCSNPP = dict(img_resolution=8, img_channels=3, model_type='SongUNet', embedding_type='fourier', channel_mult_noise=2,
              encoder_type='residual', decoder_type='skip', resample_filter=[1, 3, 3, 1], model_channels=16,
              channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)

NCSNPP_KEYS = _prefixed(
    {'map_noise.freqs'} | _wb('map_layer0', 'map_layer1', 'enc.8x8_conv')
    | _unet_block('enc.8x8_block0')
    | _unet_block('enc.4x4_down', skip='conv+filter', resample=True)
    | _wb('enc.4x4_aux_residual') | {'enc.4x4_aux_residual.resample_filter'}
    | _unet_block('enc.4x4_block0', skip='conv', attn=True)
    | _unet_block('dec.4x4_in0', attn=True) | _unet_block('dec.4x4_in1')
    | _unet_block('dec.4x4_block0', skip='conv') | _unet_block('dec.4x4_block1', skip='conv', attn=True)
    | _wb('dec.4x4_aux_norm', 'dec.4x4_aux_conv')
    | _unet_block('dec.8x8_up', skip='conv+filter', resample=True)
    | _unet_block('dec.8x8_block0', skip='conv') | _unet_block('dec.8x8_block1', skip='conv')
    | {'dec.8x8_aux_up.resample_filter'} | _wb('dec.8x8_aux_norm', 'dec.8x8_aux_conv'))

SKIP_ENC = dict(img_resolution=8, img_channels=3, label_dim=10, augment_dim=9, model_type='SongUNet',
                encoder_type='skip', model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[],
                dropout=0.0)

SKIP_ENC_KEYS = _prefixed(
    _wb('map_label', 'map_layer0', 'map_layer1', 'enc.8x8_conv') | {'map_augment.weight'}
    | _unet_block('enc.8x8_block0')
    | _unet_block('enc.4x4_down', skip='conv+filter', resample=True)
    | {'enc.4x4_aux_down.resample_filter'} | _wb('enc.4x4_aux_skip')
    | _unet_block('enc.4x4_block0', skip='conv')
    | _unet_block('dec.4x4_in0', attn=True) | _unet_block('dec.4x4_in1')
    | _unet_block('dec.4x4_block0', skip='conv') | _unet_block('dec.4x4_block1', skip='conv')
    | _unet_block('dec.8x8_up', skip='conv+filter', resample=True)
    | _unet_block('dec.8x8_block0', skip='conv') | _unet_block('dec.8x8_block1', skip='conv')
    | _wb('dec.8x8_aux_norm', 'dec.8x8_aux_conv'))

ADM = dict(img_resolution=8, img_channels=3, label_dim=10, augment_dim=9, model_channels=32, channel_mult=[1, 2],
           num_blocks=1, attn_resolutions=[4], dropout=0.0)

ADM_KEYS = _prefixed(
    {'map_augment.weight', 'map_label.weight'} | _wb('map_layer0', 'map_layer1', 'enc.8x8_conv')
    | _unet_block('enc.8x8_block0')
    | _unet_block('enc.4x4_down', skip='filter', resample=True)
    | _unet_block('enc.4x4_block0', skip='conv', attn=True)
    | _unet_block('dec.4x4_in0', attn=True) | _unet_block('dec.4x4_in1')  # in1 never attends, even here
    | _unet_block('dec.4x4_block0', skip='conv', attn=True) | _unet_block('dec.4x4_block1', skip='conv', attn=True)
    | _unet_block('dec.8x8_up', skip='filter', resample=True)
    | _unet_block('dec.8x8_block0', skip='conv') | _unet_block('dec.8x8_block1', skip='conv')
    | _wb('out_norm', 'out_conv'))

CASES = {
    'ncsnpp-ve': (networks.VEPrecond, NCSNPP, NCSNPP_KEYS),
    'ddpmpp-skip-vp': (networks.VPPrecond, SKIP_ENC, SKIP_ENC_KEYS),
    'adm-iddpm': (networks.iDDPMPrecond, ADM, ADM_KEYS | {'u'}),
    'adm-edm': (networks.EDMPrecond, ADM, ADM_KEYS),
}


@pytest.fixture(scope='module')
def tiny_nets():
    nets = {}
    for name, (cls, kwargs, _) in CASES.items():
        torch.manual_seed(0)
        nets[name] = cls(**kwargs).eval()
    return nets


def _inputs(net, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn([batch, net.img_channels, net.img_resolution, net.img_resolution], generator=gen)
    sigma = torch.tensor([0.3, 7.0][:batch])
    labels = None
    if net.label_dim:
        labels = torch.nn.functional.one_hot(torch.arange(batch) % net.label_dim, net.label_dim).float()
    return x, sigma, labels


@pytest.mark.parametrize('name', list(CASES))
def test_state_dict_keys_match_edm(tiny_nets, name):
    assert set(tiny_nets[name].state_dict()) == CASES[name][2]


def test_representative_shapes(tiny_nets):
    ncsn = tiny_nets['ncsnpp-ve'].state_dict()
    assert ncsn['model.map_noise.freqs'].shape == (16,)                     # model_channels * channel_mult_noise / 2
    assert ncsn['model.enc.4x4_aux_residual.weight'].shape == (16, 3, 3, 3)
    assert ncsn['model.enc.4x4_down.conv0.resample_filter'].shape == (1, 1, 4, 4)
    assert ncsn['model.dec.4x4_block1.norm0.weight'].shape == (48,)         # [x, skip] = 32 + 16
    assert ncsn['model.dec.4x4_aux_conv.weight'].shape == (3, 32, 3, 3)
    f = ncsn['model.enc.4x4_down.conv0.resample_filter'][0, 0]
    assert torch.allclose(f, torch.outer(torch.tensor([1., 3, 3, 1]), torch.tensor([1., 3, 3, 1])) / 64)
    adm = tiny_nets['adm-iddpm']
    sd = adm.state_dict()
    assert sd['model.out_conv.weight'].shape == (6, 32, 3, 3)               # iDDPM predicts variances too
    assert sd['model.enc.4x4_block0.affine.weight'].shape == (128, 128)     # adaptive scale: [scale, shift]
    assert sd['model.map_label.weight'].shape == (128, 10)
    assert sd['u'].shape == (1001,)
    assert adm.model.dec['4x4_in0'].num_heads == 1 and adm.model.enc['8x8_block0'].num_heads == 0
    assert adm.model.out_norm.eps == 1e-5 and tiny_nets['ncsnpp-ve'].model.dec['8x8_aux_norm'].eps == 1e-6


@pytest.mark.parametrize('name', list(CASES))
def test_forward_shape_and_pickle_round_trip(tiny_nets, name):
    net = tiny_nets[name]
    x, sigma, labels = _inputs(net)
    kwargs = dict(augment_labels=torch.randn([2, 9])) if CASES[name][1].get('augment_dim') else {}
    with torch.no_grad():
        out = net(x, sigma, labels, **kwargs)
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    clone = pickle.loads(pickle.dumps(net))
    assert clone.init_kwargs == net.init_kwargs
    with torch.no_grad():
        assert torch.equal(clone(x, sigma, labels, **kwargs), out)


def test_pickle_loads_without_training_package(tiny_nets, tmp_path, repo_dir):
    """The pickle carries this module's source: it must load where `training` is not importable (as in EDM)."""
    nets = {name: tiny_nets[name] for name in ('ncsnpp-ve', 'adm-iddpm')}
    inputs = {name: _inputs(net) for name, net in nets.items()}
    with torch.no_grad():
        outputs = {name: net(*inputs[name]) for name, net in nets.items()}
    with open(tmp_path / 'nets.pkl', 'wb') as f:
        pickle.dump(dict(nets=nets, inputs=inputs), f)
    torch.save(outputs, tmp_path / 'want.pt')
    script = (
        "import pickle, sys, torch\n"
        "sys.modules['training'] = None\n"  # any import of training.* now fails
        "d = pickle.load(open('nets.pkl', 'rb'))\n"
        "want = torch.load('want.pt')\n"
        "with torch.no_grad():\n"
        "    for name, net in d['nets'].items():\n"
        "        assert type(net).__module__.startswith('_imported_module_'), type(net).__module__\n"
        "        assert torch.equal(net(*d['inputs'][name]), want[name]), name\n"
        "print('ok')\n")
    env = dict(os.environ, PYTHONPATH=str(repo_dir), OMP_NUM_THREADS='1')
    result = subprocess.run([sys.executable, '-c', script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == 'ok', result.stderr


def test_cpu_ignores_use_fp16_and_force_fp32():
    torch.manual_seed(1)
    a = networks.EDMPrecond(use_fp16=False, **ADM).eval()
    torch.manual_seed(1)
    b = networks.EDMPrecond(use_fp16=True, **ADM).eval()
    x, sigma, labels = _inputs(a)
    with torch.no_grad():
        ref = a(x, sigma, labels)
        assert torch.equal(b(x, sigma, labels), ref)
        assert torch.equal(b(x, sigma, labels, force_fp32=True), ref)


# ---------------------------------------------------------------- preconditioner formulas

class _RecordingModel(torch.nn.Module):
    """Stands in for the U-Net: remembers its inputs and returns a fixed tensor."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        self.seen = (x, noise_labels, class_labels)
        return self.out


def test_vp_sigma_range_and_formulas(tiny_nets):
    net = tiny_nets['ddpmpp-skip-vp']
    assert net.sigma_min == 0.0009765625
    assert net.sigma_max == 152.16697692871094
    s = torch.tensor([0.01, 0.5, 20.0])
    assert torch.allclose(net.sigma(net.sigma_inv(s)), s, rtol=1e-4)
    x, _, _ = _inputs(net, batch=3)
    F = torch.randn_like(x)
    net.model, model = _RecordingModel(F), net.model
    try:
        D = net(x, s)
        seen_x, seen_noise, seen_labels = net.model.seen
    finally:
        net.model = model
    sig = s.reshape(-1, 1, 1, 1)
    assert torch.allclose(seen_x, x / (1 + sig ** 2).sqrt())
    assert torch.allclose(seen_noise, 999 * net.sigma_inv(s))
    assert torch.equal(seen_labels, torch.zeros([1, 10]))  # no labels given: one all-zero row
    assert torch.allclose(D, x - sig * F)


def test_ve_formulas(tiny_nets):
    net = tiny_nets['ncsnpp-ve']
    assert (net.sigma_min, net.sigma_max) == (0.02, 100)
    x, s, _ = _inputs(net)
    F = torch.randn_like(x)
    net.model, model = _RecordingModel(F), net.model
    try:
        D = net(x, s)
        seen_x, seen_noise, seen_labels = net.model.seen
    finally:
        net.model = model
    assert torch.equal(seen_x, x) and seen_labels is None
    assert torch.allclose(seen_noise, (s / 2).log())
    assert torch.allclose(D, x + s.reshape(-1, 1, 1, 1) * F)


def test_iddpm_grid_and_formulas(tiny_nets):
    net = tiny_nets['adm-iddpm']
    u = net.u
    assert u[-1] == 0 and bool((u[:-1] > u[1:]).all())
    assert net.sigma_min == float(u[999]) and net.sigma_max == float(u[0])
    s = torch.tensor([u[10] * 1.001, u[500] * 0.999, 1e5, 1e-9])  # u[0] is about 2e4
    assert net.round_sigma(s, return_index=True).tolist() == [10, 500, 0, 1000]
    snapped = net.round_sigma(s.double())
    assert snapped.dtype == torch.float64 and torch.equal(snapped, u[[10, 500, 0, 1000]].double())

    x, _, _ = _inputs(net)
    s = u[[10, 500]]
    F = torch.randn([2, 6, 8, 8])
    net.model, model = _RecordingModel(F), net.model
    try:
        D = net(x, s)
        seen_x, seen_noise, _ = net.model.seen
    finally:
        net.model = model
    sig = s.reshape(-1, 1, 1, 1)
    assert torch.allclose(seen_x, x / (1 + sig ** 2).sqrt())
    assert seen_noise.tolist() == [989.0, 499.0]  # M - 1 - grid index
    assert torch.allclose(D, x - sig * F[:, :3])  # the variance half is ignored


def test_edm_formulas(tiny_nets):
    net = tiny_nets['adm-edm']
    x, s, labels = _inputs(net)
    F = torch.randn_like(x)
    net.model, model = _RecordingModel(F), net.model
    try:
        D = net(x, s, labels)
        seen_x, seen_noise, seen_labels = net.model.seen
    finally:
        net.model = model
    sig, sd = s.reshape(-1, 1, 1, 1), 0.5
    assert torch.allclose(seen_x, x / (sd ** 2 + sig ** 2).sqrt())
    assert torch.allclose(seen_noise, s.log() / 4)
    assert torch.equal(seen_labels, labels)
    c_skip = sd ** 2 / (sig ** 2 + sd ** 2)
    c_out = sig * sd / (sig ** 2 + sd ** 2).sqrt()
    assert torch.allclose(D, c_skip * x + c_out * F)


# ---------------------------------------------------------------- layers

def test_attention_head_layout():
    """qkv channel h*(3C/H) + 3c + {0,1,2} is head h's channel c of q, k, v; softmax over keys; k / sqrt(C/H)."""
    torch.manual_seed(2)
    block = networks.UNetBlock(in_channels=8, out_channels=8, emb_channels=4, attention=True, num_heads=2,
                               init_zero={}, skip_scale=0.7)
    x = torch.randn([2, 8, 3, 3])
    with torch.no_grad():
        got = block._attend(x)
        qkv = block.qkv(block.norm2(x)).reshape(2, 2, 4, 3, 9)  # [n, head, c, {q,k,v}, pixel]
        heads = []
        for h in range(2):
            q, k, v = qkv[:, h, :, 0], qkv[:, h, :, 1], qkv[:, h, :, 2]
            w = torch.softmax(torch.einsum('ncq,nck->nqk', q, k) / 2.0, dim=2)
            heads.append(torch.einsum('nqk,nck->ncq', w, v))
        want = (block.proj(torch.stack(heads, 1).reshape(2, 8, 3, 3)) + x) * 0.7
    assert torch.allclose(got, want, atol=1e-6)


def test_attention_op_gradient():
    gen = torch.Generator().manual_seed(3)
    q = torch.randn([3, 4, 5], generator=gen, requires_grad=True)
    k = torch.randn([3, 4, 6], generator=gen, requires_grad=True)
    dw = torch.randn([3, 5, 6], generator=gen)
    w = networks.AttentionOp.apply(q, k)
    dq, dk = torch.autograd.grad(w, [q, k], dw)
    q2, k2 = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    w2 = torch.softmax(torch.einsum('ncq,nck->nqk', q2, k2) / 2.0, dim=2)
    dq2, dk2 = torch.autograd.grad(w2, [q2, k2], dw.double())
    assert torch.allclose(w.double(), w2, atol=1e-6)
    assert torch.allclose(dq.double(), dq2, atol=1e-5) and torch.allclose(dk.double(), dk2, atol=1e-5)


def test_conv_resampling_preserves_constants():
    """Normalised FIR filters: down/upsampling a constant image keeps it constant away from the border."""
    x = torch.full([1, 2, 8, 8], 3.0)
    down = networks.Conv2d(2, 2, kernel=0, down=True, resample_filter=[1, 3, 3, 1])
    up = networks.Conv2d(2, 2, kernel=0, up=True, resample_filter=[1, 3, 3, 1])
    assert down(x).shape == (1, 2, 4, 4) and up(x).shape == (1, 2, 16, 16)
    assert torch.allclose(down(x)[..., 1:-1, 1:-1], x[..., :2, :2])
    assert torch.allclose(up(x)[..., 2:-2, 2:-2], torch.full([1, 2, 12, 12], 3.0))
    fused = networks.Conv2d(2, 5, kernel=3, down=True, resample_filter=[1, 3, 3, 1], fused_resample=True)
    assert fused(x).shape == (1, 5, 4, 4)


def test_positional_embedding_frequencies():
    emb = networks.PositionalEmbedding(num_channels=8, endpoint=True)
    t = torch.tensor([0.0, 2.0])
    freqs = 10000.0 ** -(torch.arange(4) / 3)  # endpoint: the last frequency is exactly 1/10000
    want = torch.cat([torch.outer(t, freqs).cos(), torch.outer(t, freqs).sin()], dim=1)
    assert torch.allclose(emb(t), want)


def test_label_dropout_zeroes_labels_in_training():
    torch.manual_seed(4)
    net = networks.SongUNet(img_resolution=8, in_channels=3, out_channels=3, label_dim=10, model_channels=16,
                            channel_mult=[1], num_blocks=1, attn_resolutions=[], dropout=0.0, label_dropout=1.0)
    with torch.no_grad():
        net.dec['8x8_aux_conv'].weight.mul_(1e5)  # undo the near-zero output init so labels visibly matter
    x, noise = torch.randn([2, 3, 8, 8]), torch.tensor([0.1, -0.3])
    labels = torch.eye(10)[:2]
    with torch.no_grad():
        dropped = net.train()(x, noise, labels)
        zeros = net.eval()(x, noise, torch.zeros_like(labels))
        kept = net.eval()(x, noise, labels)
    assert torch.equal(dropped, zeros) and not torch.allclose(kept, zeros)


def test_invalid_configuration_rejected():
    with pytest.raises(ValueError):
        networks.SongUNet(img_resolution=8, in_channels=3, out_channels=3, encoder_type='bogus')
    with pytest.raises(ValueError):
        networks.EDMPrecond(img_resolution=8, img_channels=3, model_type='NoSuchUNet')


def _nhwc_ddpmpp():
    """A small DDPM++ with attention at 8x8 and the 2x2 box resampling filter, in training mode."""
    torch.manual_seed(0)
    return networks.EDMPrecond(img_resolution=16, img_channels=3, label_dim=0, model_type='SongUNet',
                               model_channels=32, channel_mult=[1, 2], attn_resolutions=[8], num_blocks=1,
                               dropout=0, embedding_type='positional', encoder_type='standard', decoder_type='standard',
                               channel_mult_noise=1, resample_filter=[1, 1])


def test_bf16_nhwc_path_keeps_nhwc_and_matches_nchw():
    # --bf16 --channels_last: every 4-D activation stays NHWC (attention, resampling and group norm included), and
    # the result is the NCHW bfloat16 network's up to bfloat16 rounding.
    net = _nhwc_ddpmpp()
    g = torch.Generator().manual_seed(1)
    x = torch.randn([4, 3, 16, 16], generator=g)
    sigma = torch.rand([4], generator=g) + 0.5
    layouts = []
    def hook(_module, _inputs, out):
        if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[1] > 3:
            layouts.append(out.is_contiguous(memory_format=torch.channels_last))
    handles = [m.register_forward_hook(hook) for m in net.model.modules()]
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        nhwc = net(x.contiguous(memory_format=torch.channels_last), sigma)
    for h in handles:
        h.remove()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        nchw = net(x, sigma)
    exact = net(x, sigma).detach()
    assert len(layouts) > 20 and all(layouts)
    assert (nhwc - exact).abs().max() < 0.05 * exact.abs().max()
    assert (nhwc - nchw).abs().max() < 0.05 * exact.abs().max()


def test_box_resampling_shortcuts_equal_the_depthwise_filters():
    # The NHWC bfloat16 path replaces the 2x2 box filter's depthwise convolutions by nearest upsampling (the same
    # values) and 2x2 average pooling (the same sums, another order).
    g = torch.Generator().manual_seed(2)
    x = torch.randn([2, 8, 6, 6], generator=g).to(torch.bfloat16)
    f = networks._fir_filter_2d([1, 1]).to(torch.bfloat16) # pylint: disable=protected-access
    nhwc = x.contiguous(memory_format=torch.channels_last)
    assert networks._nhwc_bf16(nhwc) and not networks._nhwc_bf16(x) # pylint: disable=protected-access
    assert torch.equal(networks._upsample2x(nhwc, f, 0), networks._upsample2x(x, f, 0)) # pylint: disable=protected-access
    down = networks._downsample2x(nhwc, f, 0).float() # pylint: disable=protected-access
    assert (down - networks._downsample2x(x, f, 0).float()).abs().max() <= 2**-7 * x.abs().max() # pylint: disable=protected-access
    assert (down - torch.nn.functional.avg_pool2d(x.float(), 2)).abs().max() <= 2**-7 * x.abs().max()
