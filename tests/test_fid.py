"""Tests of fid.py: the ref/calc command line, torchrun, bad input."""

import os
import subprocess
import sys

import numpy as np
import PIL.Image
from click.testing import CliRunner

import dnnlib
import fid
from training import detectors
from test_detectors import make_standin_pickle

#----------------------------------------------------------------------------

#----------------------------------------------------------------------------

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
