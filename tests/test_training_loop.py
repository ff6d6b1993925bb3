"""Tests of training/training_loop.py: artifacts, exact resume after SIGKILL, 2 ranks == 1 rank, NaN stop, resume checks.

Run as a script, this file is the driver that subprocess tests start (also under torchrun).
"""

import io
import json
import os
import pathlib
import pickle
import signal
import subprocess
import sys
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
HERE = pathlib.Path(__file__).resolve().parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import dnnlib # pylint: disable=wrong-import-position
from training import checkpoint, training_loop # pylint: disable=wrong-import-position
from training.dataset import ImageFolderDataset # pylint: disable=wrong-import-position

BATCH = 8
TICK_KIMG = 2 * BATCH / 1000 # A tick every two steps.

#----------------------------------------------------------------------------
# Test data and configurations.

def make_image_zip(path, num=16, res=8, channels=3, labels=True, seed=0):
    """A zip of `num` random PNGs plus dataset.json with class labels, as dataset_tool.py writes."""
    rnd = np.random.RandomState(seed)
    with zipfile.ZipFile(path, 'w') as z:
        for i in range(num):
            pixels = rnd.randint(0, 256, size=[res, res, channels], dtype=np.uint8)
            buf = io.BytesIO()
            PIL.Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels).save(buf, format='png')
            z.writestr(f'{i // 10:05d}/img{i:08d}.png', buf.getvalue())
        if labels:
            entries = [[f'{i // 10:05d}/img{i:08d}.png', i % 4] for i in range(num)]
            z.writestr('dataset.json', json.dumps(dict(labels=entries)))
    return str(path)

@pytest.fixture(scope='module')
def data_zip(tmp_path_factory):
    return make_image_zip(tmp_path_factory.mktemp('data') / 'tiny.zip')

def tiny_config(data, run_dir, **overrides):
    """training_loop() arguments for a tiny EDM run on CPU (8x8, 16 channels, one block)."""
    c = dict(
        run_dir=str(run_dir),
        dataset_kwargs=dict(class_name='training.dataset.ImageFolderDataset', path=data, use_labels=False, xflip=True),
        data_loader_kwargs=dict(num_workers=0),
        network_kwargs=dict(class_name='training.networks.EDMPrecond', model_type='SongUNet', model_channels=16,
                            channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], dropout=0.1, augment_dim=9,
                            embedding_type='positional', encoder_type='standard', decoder_type='standard',
                            channel_mult_noise=1, resample_filter=[1, 1]),
        loss_kwargs=dict(class_name='training.loss.EDMLoss'),
        optimizer_kwargs=dict(class_name='torch.optim.Adam', lr=1e-3, betas=[0.9, 0.999], eps=1e-8),
        augment_kwargs=dict(class_name='training.augment.AugmentPipe', p=0.5, xflip=1e8, yflip=1, scale=1,
                            rotate_frac=1, aniso=1, translate_frac=1),
        seed=3, batch_size=BATCH, batch_gpu=4, total_iters=4, ema_halflife_kimg=0.05, ema_rampup_ratio=0.05,
        lr_rampup_kimg=0.02, kimg_per_tick=TICK_KIMG, snapshot_ticks=1, state_dump_ticks=1,
        cudnn_benchmark=False, device='cpu',
    )
    c.update(overrides)
    return c

def run_driver(config, nproc=1, kill_at_dump=None, weights_out=None, check=True):
    """Run training_loop(**config) in a fresh process (torchrun when nproc > 1); returns the CompletedProcess."""
    job = json.dumps(dict(config=config, kill_at_dump=kill_at_dump, weights_out=weights_out))
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), job]
    if nproc > 1:
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}'] + cmd[1:]
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join([str(REPO), str(HERE)]))
    proc = subprocess.run(cmd, env=env, cwd=str(REPO), capture_output=True, text=True, timeout=300, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f'driver failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
    return proc

def load_state(run_dir):
    return torch.load(checkpoint.find_training_state(str(run_dir)), weights_only=True)

def assert_tensors_equal(a, b, path=''):
    """Bitwise equality of nested dicts/lists of tensors and numbers."""
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), path
        for key in a:
            assert_tensors_equal(a[key], b[key], f'{path}.{key}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_tensors_equal(x, y, f'{path}[{i}]')
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    else:
        assert a == b, path

#----------------------------------------------------------------------------
# Plugin-contract fixtures: a dataset with per-item extras and a loss without randomness.

class FixedNoiseDataset(ImageFolderDataset):
    """Items (image, label, extras) whose extras (noise, sigma) depend only on the raw image index."""

    def __getitem__(self, idx):
        image, label = super().__getitem__(idx)
        raw_idx = self.get_raw_index(idx)
        noise = np.random.RandomState(raw_idx).randn(*image.shape).astype(np.float32)
        return image, label, dict(noise=noise, sigma=np.float32(0.2 + 0.3 * (raw_idx % 4)))

class FixedNoiseLoss:
    """EDM-weighted denoising loss at the dataset's own noise and sigma: no random draws at all."""

    def __call__(self, net, images, labels=None, augment_pipe=None, noise=None, sigma=None):
        sigma = sigma.reshape(-1, 1, 1, 1)
        weight = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
        return weight * (net(images + sigma * noise, sigma, labels) - images) ** 2

class NaNAfterLoss:
    """EDM's loss for the first `good_calls` calls, NaN afterwards."""

    def __init__(self, good_calls):
        self.good_calls = good_calls
        self.calls = 0

    def __call__(self, net, images, labels=None, augment_pipe=None):
        from training.loss import EDMLoss
        self.calls += 1
        loss = EDMLoss()(net, images, labels, augment_pipe)
        return loss if self.calls <= self.good_calls else loss * float('nan')

#----------------------------------------------------------------------------

def test_tiny_run_writes_loadable_artifacts(data_zip, tmp_path, capsys):
    from training import snapshot
    c = tiny_config(data_zip, tmp_path, total_iters=3)
    training_loop.training_loop(**c)
    out = capsys.readouterr().out
    status = [line for line in out.splitlines() if line.startswith('tick ')]
    assert len(status) == 2 # Tick 0 after the first step, then the end of the run.
    for field in ('kimg', 'time', 'sec/tick', 'sec/kimg', 'maintenance', 'cpumem', 'gpumem 0.00', 'reserved 0.00'):
        assert field in status[0]
    assert 'Exiting...' in out

    names = set(os.listdir(tmp_path))
    assert {'network-snapshot-000000.pkl', 'network-snapshot-000000.safetensors', 'training-state-000000.pt',
            'stats.jsonl'} <= names
    assert not [n for n in names if '.tmp-' in n]
    stats = [json.loads(line) for line in (tmp_path / 'stats.jsonl').read_text().splitlines()]
    assert len(stats) == 2 and stats[1]['Progress/kimg']['mean'] == pytest.approx(3 * BATCH / 1000)
    assert stats[0]['Loss/loss']['num'] == 1 * BATCH * 3 * 8 * 8 and np.isfinite(stats[1]['Loss/loss']['mean'])

    with open(tmp_path / 'network-snapshot-000000.pkl', 'rb') as f:
        data = pickle.load(f)
    assert sorted(data) == ['augment_pipe', 'dataset_kwargs', 'ema', 'loss_fn']
    assert data['dataset_kwargs'] == c['dataset_kwargs']
    state = torch.load(tmp_path / 'training-state-000000.pt', weights_only=True)
    assert state['cur_nimg'] == 3 * BATCH and state['cur_tick'] == 2
    assert_tensors_equal(data['ema'].state_dict(), state['ema'])
    net_st = snapshot.load_network_safetensors(str(tmp_path / 'network-snapshot-000000.safetensors'), verbose=False)

    # The snapshot denoises: same output from pickle and safetensors, and closer to the clean image than the input.
    g = torch.Generator().manual_seed(0)
    clean = torch.rand([4, 3, 8, 8], generator=g) * 2 - 1
    sigma = torch.full([4], 0.05)
    noisy = clean + sigma.reshape(-1, 1, 1, 1) * torch.randn(clean.shape, generator=g)
    with torch.no_grad():
        d_pkl = data['ema'](noisy, sigma)
        d_st = net_st(noisy, sigma)
    assert d_pkl.shape == clean.shape and torch.isfinite(d_pkl).all()
    assert torch.equal(d_pkl, d_st)
    assert (d_pkl - clean).square().mean() < (noisy - clean).square().mean()

def test_transfer_starts_from_the_snapshot_ema(data_zip, tmp_path):
    src = tmp_path / 'src'
    training_loop.training_loop(**tiny_config(data_zip, src, total_iters=2))
    with open(src / 'network-snapshot-000000.pkl', 'rb') as f:
        source = pickle.load(f)['ema'].state_dict()
    # EDM's first step runs at lr 0 (the ramp starts at 0 images), so one step leaves net and EMA where transfer put them.
    dst = tmp_path / 'dst'
    training_loop.training_loop(**tiny_config(data_zip, dst, total_iters=1, seed=9, ema_rampup_ratio=None,
                                              resume_pkl=str(src / 'network-snapshot-000000.pkl')))
    with open(dst / 'network-snapshot-000000.pkl', 'rb') as f:
        assert_tensors_equal(pickle.load(f)['ema'].state_dict(), source)
    fresh = tmp_path / 'fresh'
    training_loop.training_loop(**tiny_config(data_zip, fresh, total_iters=1, seed=9, ema_rampup_ratio=None))
    with open(fresh / 'network-snapshot-000000.pkl', 'rb') as f:
        assert not torch.equal(pickle.load(f)['ema'].state_dict()['model.enc.8x8_conv.weight'], source['model.enc.8x8_conv.weight'])

def test_bf16_autocast_trains(data_zip, tmp_path):
    training_loop.training_loop(**tiny_config(data_zip, tmp_path, total_iters=2, bf16=True))
    state = torch.load(tmp_path / 'training-state-000000.pt', weights_only=True)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in state['net'].values() if v.is_floating_point())

def test_sigkill_while_writing_a_dump_then_resume_is_bit_exact(data_zip, tmp_path):
    # Ticks every 2 steps, dumps every tick: dumps after steps 3, 5, 7 and 8 (all named ...000000.pt).
    base = dict(total_iters=8, snapshot_ticks=2)
    run_driver(tiny_config(data_zip, tmp_path / 'a', **base))

    # Die halfway through writing the third dump: the second one must stay intact and be picked up.
    proc = run_driver(tiny_config(data_zip, tmp_path / 'b', **base), kill_at_dump=3, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    leftovers = [n for n in os.listdir(tmp_path / 'b') if n.startswith('training-state-000000.pt.tmp-')]
    assert len(leftovers) == 1 # The torn write, never renamed into place.
    assert load_state(tmp_path / 'b')['cur_nimg'] == 5 * BATCH

    # Resume in a new run directory, with a DataLoader worker this time: the data order must not change.
    resume = checkpoint.find_training_state(str(tmp_path / 'b'))
    run_driver(tiny_config(data_zip, tmp_path / 'c', resume_state_dump=resume,
                           data_loader_kwargs=dict(num_workers=1, prefetch_factor=2), **base))
    a, c = load_state(tmp_path / 'a'), load_state(tmp_path / 'c')
    assert a['cur_nimg'] == c['cur_nimg'] == 8 * BATCH
    for key in ('net', 'ema', 'optimizer', 'cur_tick', 'rng'):
        assert_tensors_equal(a[key], c[key], key)
    # Training did happen: the resumed part moved the weights away from the dump it started from.
    started = torch.load(resume, weights_only=True)['net']
    assert any(not torch.equal(started[k], c['net'][k]) for k in started)

def test_two_ranks_match_one_rank(data_zip, tmp_path):
    config = dict(dataset_kwargs=dict(class_name='test_training_loop.FixedNoiseDataset', path=data_zip),
                  loss_kwargs=dict(class_name='test_training_loop.FixedNoiseLoss'), augment_kwargs=None,
                  optimizer_kwargs=dict(class_name='torch.optim.SGD', lr=0.005), lr_rampup_kimg=0,
                  snapshot_ticks=None, state_dump_ticks=None, total_iters=3,
                  seed=0) # EDM seeds rank r with seed * world_size + r: only seed 0 gives rank 0 the same init.
    net = dict(tiny_config(data_zip, tmp_path)['network_kwargs'], dropout=0, augment_dim=0)
    one = tiny_config(data_zip, tmp_path / 'one', network_kwargs=net, batch_gpu=8, **config)
    two = tiny_config(data_zip, tmp_path / 'two', network_kwargs=net, batch_gpu=2, **config) # 2 accumulation rounds.
    run_driver(one, weights_out=str(tmp_path / 'one-{rank}.pt'))
    run_driver(two, nproc=2, weights_out=str(tmp_path / 'two-{rank}.pt'))

    w1 = torch.load(tmp_path / 'one-0.pt', weights_only=True)
    w2 = [torch.load(tmp_path / f'two-{r}.pt', weights_only=True) for r in range(2)]
    assert_tensors_equal(w2[0], w2[1]) # Every rank holds the same weights, bit for bit.
    assert_tensors_equal(w1['init'], w2[0]['init'])
    # Equal up to float summation order: the 1-vs-2-rank gap is tiny next to what training moved.
    for part in ('net', 'ema'):
        moved = max((w1[part][k] - w1['init'][k]).abs().max().item() for k in w1[part])
        gap = max((w2[0][part][k] - w1[part][k]).abs().max().item() for k in w1[part])
        assert moved > 1e-3 and gap < 1e-4 * moved, (part, moved, gap)

def test_nonfinite_loss_stops_and_names_last_good_snapshot(data_zip, tmp_path):
    c = tiny_config(data_zip, tmp_path, loss_kwargs=dict(class_name='test_training_loop.NaNAfterLoss', good_calls=2),
                    total_iters=50, kimg_per_tick=100, max_nonfinite_steps=3)
    with pytest.raises(dnnlib.util.UserError, match=r'NaN/Inf for 3 consecutive steps.*network-snapshot-000000\.pkl'):
        training_loop.training_loop(**c)
    # Two rounds of 4 per step: the NaNs start in step 2, so the stop comes after step 4, long before step 50.
    assert c['loss_kwargs']['good_calls'] == 2 and os.path.isfile(tmp_path / 'network-snapshot-000000.pkl')
    assert not os.path.exists(tmp_path / 'training-state-000000.pt')

#----------------------------------------------------------------------------
# Resume helpers.

def test_find_training_state_picks_newest_and_refuses_nothing(tmp_path):
    for name in ('training-state-000004.pt', 'training-state-000012.pt', 'training-state-000100.pt.tmp-77', 'other.pt'):
        (tmp_path / name).write_bytes(b'x')
    assert checkpoint.find_training_state(str(tmp_path)) == str(tmp_path / 'training-state-000012.pt')
    assert checkpoint.find_training_state(str(tmp_path / 'training-state-000004.pt')).endswith('000004.pt')
    with pytest.raises(dnnlib.util.UserError, match='does not exist'):
        checkpoint.find_training_state(str(tmp_path / 'missing'))
    with pytest.raises(dnnlib.util.UserError, match='training-state'):
        checkpoint.find_training_state(str(tmp_path / 'other.pt'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(dnnlib.util.UserError, match='no training-state'):
        checkpoint.find_training_state(str(tmp_path / 'empty'))
    with pytest.raises(dnnlib.util.UserError, match='cannot read'):
        checkpoint.load_training_state(str(tmp_path / 'training-state-000004.pt'))

def test_resume_refuses_changed_kwargs_naming_the_key():
    stored = dict(network_kwargs=dict(class_name='N', dropout=0.1, channel_mult=[1, 2]),
                  loss_kwargs=dict(class_name='L', sigma_tn=0.5), dataset_kwargs=dict(path='a.zip'))
    state = {k: json.dumps(v) for k, v in stored.items()}
    checkpoint.check_resume_compatible(state, **{k: dnnlib.EasyDict(v) for k, v in stored.items()})
    checkpoint.check_resume_compatible(state, **dict(stored, network_kwargs=dict(stored['network_kwargs'], channel_mult=(1, 2))))
    with pytest.raises(dnnlib.util.UserError, match=r'loss_kwargs\.sigma_tn differs.*stored 0\.5, now 0\.2'):
        checkpoint.check_resume_compatible(state, **dict(stored, loss_kwargs=dict(class_name='L', sigma_tn=0.2)))
    with pytest.raises(dnnlib.util.UserError, match=r'dataset_kwargs\.xflip differs'):
        checkpoint.check_resume_compatible(state, **dict(stored, dataset_kwargs=dict(path='a.zip', xflip=True)))
    with pytest.raises(dnnlib.util.UserError, match=r'network_kwargs\.channel_mult differs'):
        checkpoint.check_resume_compatible(state, **dict(stored, network_kwargs=dict(stored['network_kwargs'], channel_mult=[2, 2])))

def test_ema_halflife_rampup_and_lr_rampup():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    ema = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)).requires_grad_(False)
    t = dnnlib.EasyDict(net=net, ema=ema, batch_size=64, optimizer_kwargs=dict(lr=0.5),
                        optimizer=torch.optim.SGD(net.parameters(), lr=0.5))
    for cur_nimg, ratio, beta in [(10000, 0.05, 0.5 ** (64 / 500)), (10000, None, 0.5 ** (64 / 2000)), (0, 0.05, 0.0)]:
        before = [p.clone() for p in ema.parameters()]
        training_loop.update_ema(t, cur_nimg, ema_halflife_kimg=2, ema_rampup_ratio=ratio)
        for b, p_ema, p_net in zip(before, ema.parameters(), net.parameters()):
            assert torch.equal(p_ema, p_net.detach().lerp(b, beta)) # EDM's update, bit for bit.
    for p in net.parameters():
        p.grad = torch.full_like(p, float('nan'))
    for cur_nimg, lr in [(0, 0.0), (500, 0.25), (5000, 0.5)]:
        training_loop.update_weights(t, cur_nimg, lr_rampup_kimg=1)
        assert t.optimizer.param_groups[0]['lr'] == lr
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in net.parameters()) # NaN gradients zeroed.

def test_setup_draws_random_numbers_in_edms_order(data_zip, tmp_path):
    # EDM seeds, creates the data iterator (whose base worker seed comes from the global torch RNG), then builds
    # the network: the same seed must give EDM's initial weights, which requires that one draw to happen.
    from torch_utils import misc
    c = tiny_config(data_zip, tmp_path)
    checkpoint.seed_rank(c['seed']) # pylint: disable=protected-access
    dataset_obj = dnnlib.util.construct_class_by_name(**c['dataset_kwargs'])
    sampler = misc.InfiniteSampler(dataset=dataset_obj, seed=c['seed'])
    edm_images, _ = next(iter(torch.utils.data.DataLoader(dataset=dataset_obj, sampler=sampler, batch_size=4)))
    edm_net = dnnlib.util.construct_class_by_name(**c['network_kwargs'], img_resolution=dataset_obj.resolution,
                                                  img_channels=dataset_obj.num_channels, label_dim=dataset_obj.label_dim)

    checkpoint.seed_rank(c['seed']) # pylint: disable=protected-access
    t = training_loop.setup_training(c['dataset_kwargs'], c['data_loader_kwargs'], c['network_kwargs'], c['loss_kwargs'],
                                     c['optimizer_kwargs'], c['augment_kwargs'], c['seed'], 4, None, torch.device('cpu'))
    assert_tensors_equal(t.net.state_dict(), edm_net.state_dict())
    images, _labels, extras = training_loop._next_batch(t) # pylint: disable=protected-access
    assert extras == {} and torch.equal(images, edm_images.to(torch.float32) / 127.5 - 1)

def test_split_batch():
    assert training_loop.split_batch(32, None) == (32, 32, 1)
    assert training_loop.split_batch(32, 8) == (32, 8, 4)
    assert training_loop.split_batch(32, 64) == (32, 32, 1)
    with pytest.raises(dnnlib.util.UserError, match='not divisible'):
        training_loop.split_batch(32, 12)

def test_tf32_is_off_unless_asked_for():
    try:
        training_loop._set_backends(False, tf32=True) # pylint: disable=protected-access
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        training_loop._set_backends(False) # pylint: disable=protected-access
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32

#----------------------------------------------------------------------------
# Driver for the subprocess tests.

def _kill_during_nth_save(n):
    """Make the n-th training-state torch.save write half its bytes and then SIGKILL this process."""
    real_save = torch.save
    calls = [0]
    def save(obj, f, *args, **kwargs):
        # Pickling any tensor calls torch.save too: count only the training states.
        is_state = isinstance(obj, dict) and obj.get('format') == checkpoint.STATE_FORMAT
        calls[0] += is_state
        if calls[0] < n or not is_state:
            return real_save(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[:len(buf.getvalue()) // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    torch.save = save

def _record_weights(path):
    """Wrap setup_training so the initial weights are kept, and return a function writing init/net/ema to path."""
    from torch_utils import distributed as dist
    real_setup = training_loop.setup_training
    holder = {}
    def setup(*args, **kwargs):
        t = real_setup(*args, **kwargs)
        holder['t'] = t
        holder['init'] = {k: v.clone() for k, v in t.net.state_dict().items()}
        return t
    training_loop.setup_training = setup
    def write():
        t = holder['t']
        torch.save(dict(init=holder['init'], net=t.net.state_dict(), ema=t.ema.state_dict()), path.format(rank=dist.get_rank()))
    return write

def _driver(job):
    from torch_utils import distributed as dist
    job = json.loads(job)
    torch.set_num_threads(1)
    dist.init()
    os.makedirs(job['config']['run_dir'], exist_ok=True)
    if job['kill_at_dump']:
        _kill_during_nth_save(job['kill_at_dump'])
    write = _record_weights(job['weights_out']) if job['weights_out'] else None
    training_loop.training_loop(**job['config'])
    if write:
        write()
    dist.shutdown()

if __name__ == '__main__':
    _driver(sys.argv[1])

#----------------------------------------------------------------------------
