"""Tests of generate.py: per-seed determinism (batch size, processes), file layout, grid, bad input."""

import os
import pickle
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

import generate
from training.snapshot import save_network_safetensors

SAMPLER_ARGS = ['--steps=4', '--S_churn=10', '--S_min=0.01', '--S_max=50']

#----------------------------------------------------------------------------

@pytest.fixture(scope='module')
def net_files(tmp_path_factory, make_tiny_cond_net):
    """The tiny conditional test network as .pkl and .safetensors."""
    root = tmp_path_factory.mktemp('nets')
    net = make_tiny_cond_net()
    pkl = root / 'network-snapshot-000000.pkl'
    pkl.write_bytes(pickle.dumps(dict(ema=net)))
    st = root / 'network-snapshot-000000.safetensors'
    save_network_safetensors(net, str(st))
    return dict(pkl=str(pkl), safetensors=str(st))


def run_cli(args):
    result = CliRunner().invoke(generate.main, args)
    return result.exit_code, result.stdout + result.stderr


def read_images(folder, seeds, subdirs=False):
    return {s: np.array(PIL.Image.open(generate.image_path(str(folder), s, subdirs))) for s in seeds}


def assert_same_image(a, b):
    """Same seed, same image, up to the rounding of the network's kernels: other batch sizes, thread counts and
    CPUs may pick other convolution algorithms, which can move a pixel across a rounding boundary. Tolerance:
    at most 1 grey level, on at most 1% of the pixels (a wrong seed or noise stream changes most pixels)."""
    diff = np.abs(a.astype(np.int32) - b.astype(np.int32))
    assert a.shape == b.shape and diff.max() <= 1 and (diff > 0).mean() <= 0.01, (diff.max(), (diff > 0).mean())

#----------------------------------------------------------------------------

def test_images_depend_only_on_seed(net_files, tmp_path):
    outs = {}
    for batch in (8, 3):
        out = tmp_path / f'b{batch}'
        code, text = run_cli([f'--network={net_files["pkl"]}', f'--outdir={out}', '--seeds=0-7', f'--batch={batch}'] + SAMPLER_ARGS)
        assert code == 0, text
        assert sorted(os.listdir(out)) == [f'{s:06d}.png' for s in range(8)]
        outs[batch] = read_images(out, range(8))
    for s in range(8):
        assert PIL.Image.open(generate.image_path(str(tmp_path / 'b3'), s, False)).mode == 'L'
        assert_same_image(outs[8][s], outs[3][s])
    assert len({outs[8][s].tobytes() for s in range(8)}) == 8
    # A subset in another order, from the safetensors snapshot, gives the same images.
    out = tmp_path / 'subset'
    code, text = run_cli([f'--network={net_files["safetensors"]}', f'--outdir={out}', '--seeds=6,2,5', '--batch=2'] + SAMPLER_ARGS)
    assert code == 0, text
    for s, image in read_images(out, [6, 2, 5]).items():
        assert_same_image(image, outs[8][s])


def test_two_torchrun_processes_match_one(net_files, tmp_path):
    one, two = tmp_path / 'one', tmp_path / 'two'
    common = [f'--network={net_files["pkl"]}', '--seeds=0-6', '--batch=2'] + SAMPLER_ARGS
    assert run_cli(common + [f'--outdir={one}'])[0] == 0
    env = dict(os.environ, OMP_NUM_THREADS='1')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'generate.py', f'--outdir={two}'] + common
    proc = subprocess.run(cmd, cwd=os.path.dirname(generate.__file__), env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = read_images(one, range(7)), read_images(two, range(7))
    for s in range(7):
        assert_same_image(a[s], b[s])


def test_class_subdirs_and_grid(net_files, tmp_path):
    out, grid = tmp_path / 'out', tmp_path / 'grid.png'
    code, text = run_cli([f'--network={net_files["pkl"]}', f'--outdir={out}', '--seeds=998-1002', '--subdirs', '--class=2',
                          f'--grid={grid}', '--steps=3'])
    assert code == 0, text
    assert sorted(os.listdir(out)) == ['000000', '001000']
    assert sorted(os.listdir(out / '001000')) == ['001000.png', '001001.png', '001002.png']
    images = read_images(out, range(998, 1003), subdirs=True)
    tiled = np.array(PIL.Image.open(grid))
    assert tiled.shape == (2 * 32, 3 * 32) # 5 images: 3 columns, 2 rows; 8x8 tiles enlarged 4x
    assert np.array_equal(tiled[32:64:4, 0:32:4], images[1001])
    assert np.array_equal(tiled[32:64, 0:32], images[1001].repeat(4, axis=0).repeat(4, axis=1))
    assert not tiled[32:64, 64:96].any() # the empty cell
    # The fixed class changes what the seeds give.
    code, _ = run_cli([f'--network={net_files["pkl"]}', f'--outdir={tmp_path / "c0"}', '--seeds=998-1002', '--subdirs', '--class=0', '--steps=3'])
    assert code == 0
    other = read_images(tmp_path / 'c0', range(998, 1003), subdirs=True)
    assert any(not np.array_equal(images[s], other[s]) for s in images)

#----------------------------------------------------------------------------

@pytest.mark.parametrize('args,needle', [
    (['--network={missing}'], 'No such file'),
    (['--network={corrupt}'], 'Cannot unpickle'),
    (['--network={pkl}', '--seeds=4-1'], 'range'),
    (['--network={pkl}', '--seeds=a,b'], 'Invalid integer list'),
    (['--network={pkl}', '--seeds=1,1'], 'repeats'),
    (['--network={pkl}', '--class=3'], 'out of range'),
    (['--network={pkl}', '--outdir={file}'], 'not a directory'),
    (['--network={pkl}', '--grid={dir}'], 'is a directory'),
])
def test_bad_input_gives_one_error_line(net_files, tmp_path, args, needle):
    (tmp_path / 'corrupt.pkl').write_bytes(b'\x80\x04garbage')
    (tmp_path / 'file').write_bytes(b'')
    names = dict(net_files, missing=str(tmp_path / 'absent.pkl'), corrupt=str(tmp_path / 'corrupt.pkl'),
                 file=str(tmp_path / 'file'), dir=str(tmp_path))
    out = tmp_path / 'out'
    code, text = run_cli([f'--outdir={out}', '--steps=2'] + [a.format(**names) for a in args]) # A later --outdir wins.
    errors = [line for line in text.splitlines() if line.startswith('Error:')]
    assert code == 1 and len(errors) == 1 and needle in errors[0], text
    assert 'Traceback' not in text
    assert not out.exists() or not os.listdir(out)

#----------------------------------------------------------------------------


def test_bare_grid_flag_writes_a_sibling_png(net_files, tmp_path):
    out = tmp_path / 'out'
    code, text = run_cli([f'--network={net_files["safetensors"]}', f'--outdir={out}', '--seeds=0-3', '--grid', '--steps=2'])
    assert code == 0, text
    grid = np.array(PIL.Image.open(tmp_path / 'out-grid.png'))
    assert grid.shape == (2 * 32, 2 * 32)
    assert sorted(os.listdir(out)) == [f'{s:06d}.png' for s in range(4)] # Nothing but samples in the folder.

def test_bf16_option_changes_images_slightly(net_files, tmp_path):
    seeds = list(range(6))
    for name, extra in [('exact', []), ('bf16', ['--bf16=1'])]:
        code, out = run_cli(['--network', net_files['pkl'], '--outdir', str(tmp_path / name), '--seeds=0-5', *SAMPLER_ARGS, *extra])
        assert code == 0, out
    exact, bf16 = read_images(tmp_path / 'exact', seeds), read_images(tmp_path / 'bf16', seeds)
    diff = np.stack([np.abs(exact[s].astype(int) - bf16[s]) for s in seeds])
    assert 0 < diff.mean() < 2 # uint8 levels
