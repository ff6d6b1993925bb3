"""Tests of fid.py: Frechet distance maths, batch-independent statistics, ref/calc CLI, bad input."""

import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import scipy.stats
import torch
from click.testing import CliRunner

import dnnlib
import fid
from training import detectors
from test_detectors import make_standin_pickle

#----------------------------------------------------------------------------

def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    q = scipy.stats.ortho_group.rvs(5, random_state=1)
    a, b = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    sigma1, sigma2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T # commuting: sqrt(S1 S2) = Q sqrt(ab) Q^T
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert fid.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-9)
    assert fid.frechet_distance(mu1, sigma1, mu1, sigma1) == pytest.approx(0, abs=1e-9)
    # Non-commuting case: trace term of 1-D and 2-D Gaussians, tr(sqrt(S1 S2)) via eigenvalues.
    s1 = np.array([[2.0, 0.3], [0.3, 1.0]])
    s2 = np.array([[1.0, -0.2], [-0.2, 0.5]])
    root_tr = np.sum(np.sqrt(np.linalg.eigvals(s1 @ s2).real))
    assert fid.frechet_distance(np.zeros(2), s1, np.ones(2), s2) == pytest.approx(2 + np.trace(s1 + s2) - 2 * root_tr, rel=1e-9)


def test_feature_stats_independent_of_batching():
    feats = torch.randn([23, 6], generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 1
    results = []
    for batch in (23, 5, 1):
        stats = fid.FeatureStats(6)
        for chunk in feats.split(batch):
            stats.add(chunk.to(torch.float32))
        results.append(stats.mean_cov())
    ref = feats.to(torch.float32).double().numpy()
    for mu, sigma in results:
        np.testing.assert_allclose(mu, ref.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(sigma, np.cov(ref, rowvar=False), rtol=1e-10, atol=1e-10)
    with pytest.raises(dnnlib.util.UserError):
        fid.FeatureStats(6).add(torch.zeros([2, 5]))

#----------------------------------------------------------------------------

@pytest.fixture
def image_dirs(tmp_path):
    """Two folders of 12 RGB 16x16 PNGs: smooth random images, and the same darkened."""
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


def run_fid(args):
    result = CliRunner().invoke(fid.main, args)
    return result.exit_code, result.stdout, result.stderr


def test_ref_then_calc_on_same_folder_is_zero(image_dirs, tmp_path):
    det = make_standin_pickle(tmp_path)
    ref = tmp_path / 'refs' / 'a.npz'
    code, text, err = run_fid(['ref', f'--data={image_dirs["a"]}', f'--dest={ref}', '--batch=5', f'--detector={det}'])
    assert code == 0, err
    with np.load(ref) as r:
        assert r['mu'].shape == (8,) and r['sigma'].shape == (8, 8)
        assert np.abs(r['sigma']).max() > 1e-4 # real features, not a degenerate constant
    code, text, err = run_fid(['calc', f'--images={image_dirs["a"]}', f'--ref={ref}', '--num=12', '--batch=7', f'--detector={det}'])
    assert code == 0, err
    assert abs(float(text.strip().splitlines()[-1])) < 1e-6
    code, text, err = run_fid(['calc', f'--images={image_dirs["b"]}', f'--ref={ref}', '--num=12', f'--detector={det}'])
    assert code == 0, err
    assert float(text.strip().splitlines()[-1]) > 1e-2
    # A seeded subset of 10 of the 12 images, reproducible.
    values = [run_fid(['calc', f'--images={image_dirs["a"]}', f'--ref={ref}', '--num=10', f'--seed={seed}', f'--detector={det}'])[1]
              for seed in (3, 3, 4)]
    values = [float(v.strip().splitlines()[-1]) for v in values]
    assert values[0] == values[1] != values[2]


def test_two_torchrun_processes_match_one(image_dirs, tmp_path):
    det = make_standin_pickle(tmp_path)
    one, two = tmp_path / 'one.npz', tmp_path / 'two.npz'
    args = ['ref', f'--data={image_dirs["a"]}', '--batch=2', f'--detector={det}']
    assert run_fid(args + [f'--dest={one}'])[0] == 0
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'fid.py'] + args + [f'--dest={two}']
    proc = subprocess.run(cmd, cwd=os.path.dirname(fid.__file__), env=dict(os.environ, OMP_NUM_THREADS='1'),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(one) as a, np.load(two) as b:
        np.testing.assert_allclose(b['mu'], a['mu'], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(b['sigma'], a['sigma'], rtol=1e-10, atol=1e-12)


def test_calc_matches_library_stats(image_dirs, tmp_path):
    det = detectors.load_detector('inception', path=str(make_standin_pickle(tmp_path)))
    mu, sigma = fid.calculate_stats(str(image_dirs['a']), det, max_batch_size=4)
    images = torch.stack([torch.from_numpy(np.array(PIL.Image.open(image_dirs['a'] / f'{i:06d}.png'))).permute(2, 0, 1) for i in range(12)])
    feats = det(images).double().numpy()
    np.testing.assert_allclose(mu, feats.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), rtol=1e-5, atol=1e-9)

#----------------------------------------------------------------------------

def _one_error(code, out, err, needle):
    errors = [line for line in err.splitlines() if line.startswith('Error:')]
    assert code != 0 and len(errors) == 1 and needle in errors[0], out + err
    assert 'Traceback' not in out + err


def test_bad_inputs(image_dirs, tmp_path):
    det = make_standin_pickle(tmp_path)
    good = tmp_path / 'good.npz'
    np.savez(good, mu=np.zeros(8), sigma=np.eye(8))
    bad = tmp_path / 'bad.npz'
    np.savez(bad, mean=np.zeros(8))
    wrong_dim = tmp_path / 'dim.npz'
    np.savez(wrong_dim, mu=np.zeros(4), sigma=np.eye(4))
    a = image_dirs['a']
    _one_error(*run_fid(['calc', f'--images={tmp_path / "nothing"}', f'--ref={good}', '--num=2', f'--detector={det}']), 'not found')
    _one_error(*run_fid(['calc', f'--images={a}', f'--ref={good}', f'--detector={det}']), 'expected at least 50000')
    _one_error(*run_fid(['calc', f'--images={a}', f'--ref={bad}', '--num=12', f'--detector={det}']), 'mu')
    _one_error(*run_fid(['calc', f'--images={a}', f'--ref={wrong_dim}', '--num=12', f'--detector={det}']), '4-dim')
    _one_error(*run_fid(['calc', f'--images={a}', f'--ref={tmp_path / "absent.npz"}', '--num=12', f'--detector={det}']), 'No such file')
    # A folder with a single image cannot have a covariance.
    single = tmp_path / 'single'
    single.mkdir()
    PIL.Image.new('RGB', (16, 16)).save(single / 'x.png')
    _one_error(*run_fid(['ref', f'--data={single}', f'--dest={tmp_path / "s.npz"}', f'--detector={det}']), 'at least 2')
    assert not (tmp_path / 's.npz').exists()
    _one_error(*run_fid(['ref', f'--data={a}', f'--dest={single}', f'--detector={det}']), 'is a directory')
    assert not list(tmp_path.glob('*.tmp-*')) and os.listdir(single) == ['x.png']


def test_offline_without_detector_prints_no_number(image_dirs, tmp_path, monkeypatch):
    monkeypatch.setattr(detectors, 'INCEPTION_URL', 'http://127.0.0.1:9/inception-2015-12-05.pkl') # Nothing listens there.
    monkeypatch.setattr(dnnlib.util.time, 'sleep', lambda s: None)
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    good = tmp_path / 'good.npz'
    np.savez(good, mu=np.zeros(2048), sigma=np.eye(2048))
    code, out, err = run_fid(['calc', f'--images={image_dirs["a"]}', f'--ref={good}', '--num=12'])
    _one_error(code, out, err, '--detector=')
    assert not any(line.strip().replace('.', '', 1).isdigit() for line in (out + err).splitlines())

#----------------------------------------------------------------------------


def test_rank_without_images_reads_no_empty_batch(image_dirs, tmp_path, monkeypatch):
    # 2 images over 3 ranks: rank 2's only batch is empty. It must yield no batch (an empty one cannot be
    # collated); its zero count would be summed with the other ranks' in a real run.
    det = detectors.load_detector('inception', path=str(make_standin_pickle(tmp_path)))
    monkeypatch.setattr(fid.dist, 'get_world_size', lambda: 3)
    monkeypatch.setattr(fid.dist, 'get_rank', lambda: 2)
    seen = []
    monkeypatch.setattr(fid.FeatureStats, 'add', lambda self, f: seen.append(f.shape[0]))
    with pytest.raises(dnnlib.util.UserError, match='Found 0 images'):
        fid.calculate_stats(str(image_dirs['a']), det, num_expected=2)
    assert not seen
