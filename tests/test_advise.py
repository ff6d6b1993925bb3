"""Tests of `python -m ambient.advise`: the files it writes for 100 digits, the per-image file, DINOv2 (a local
stand-in), the pilot sweep (the sweep's fake tools) and one-line errors on bad input."""

import json
import os
import pathlib
import subprocess
import sys

import PIL.Image
import pytest
from click.testing import CliRunner

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import dataset_tool # pylint: disable=wrong-import-position
from ambient import advise # pylint: disable=wrong-import-position
from ambient.experiments import pilot, sweep # pylint: disable=wrong-import-position
from ambient.method import advisor # pylint: disable=wrong-import-position
from training.dataset import load_images, read_dataset_json, write_image_zip # pylint: disable=wrong-import-position
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_detectors import HUBCONF # pylint: disable=wrong-import-position # The local DINOv2 stand-in.
from test_experiments_sweep import fake # pylint: disable=wrong-import-position,unused-import # The sweep's fake-tools fixture.

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def digits100(tmp_path_factory):
    """python dataset_tool.py --source digits --subset 100 --seed 0 --dest digits100.zip"""
    path = tmp_path_factory.mktemp('advise') / 'digits100.zip'
    dataset_tool.convert_dataset('digits', str(path), subset=100, seed=0)
    return path


def _run(*args):
    result = CliRunner().invoke(advise.main, [str(a) for a in args])
    # Anything but click's own exit (an uncaught exception) would have been a traceback on the command line.
    assert isinstance(result.exception, SystemExit) or result.exception is None, repr(result.exception)
    return result


def _one_error_line(result):
    return result.exit_code == 1 and result.stderr.startswith('Error: ') and result.stderr.count('\n') == 1

#----------------------------------------------------------------------------

def test_digits_advice_files_and_recommendation(digits100):
    r = _run(f'--data={digits100}', '--per-image')
    assert r.exit_code == 0, r.output
    dest = digits100.parent / 'digits100-advice' # default: beside the data
    for name in ('advice.json', 'advice.md', 'histogram.png', 'sigma_tn_per_image.json'):
        assert (dest / name).is_file(), name
    assert not list(dest.glob('*.tmp-*'))
    advice = json.loads((dest / 'advice.json').read_text())
    rec = advice['recommendation']
    assert 0.3 <= rec['recommended'] <= 0.7 and rec['range'][0] < rec['recommended'] < rec['range'][1]
    assert advice['num_images'] == 100 and advice['dim'] == 64 and advice['shape'] == [1, 8, 8]
    assert advice['scale']['median_nn'] == pytest.approx(2.70, abs=0.005) # our measurement on these 100 digits
    assert advice['rule'] == advisor.RULE and advice['explanation'] == rec['explanation']
    assert list(advice['scale']['quantiles']['nearest']) == ['p1', 'p5', 'p10', 'p25', 'p50', 'p75', 'p90', 'p99']
    assert advice['duplicate_groups'] == [] and advice['near_duplicate_groups'] == []
    with open(dest / 'histogram.png', 'rb') as f:
        assert f.read(8) == PNG_SIGNATURE
    with PIL.Image.open(dest / 'histogram.png') as im:
        im.verify()
    md = (dest / 'advice.md').read_text()
    assert '![nearest-neighbour distances](histogram.png)' in md and '| p50 |' in md and rec['explanation'] in md
    # The per-image file is keyed by the file names of dataset.json, each value within the recommended range.
    per_image = json.loads((dest / 'sigma_tn_per_image.json').read_text())
    names = [name for name, _ in read_dataset_json(digits100)['labels']]
    assert sorted(per_image) == sorted(names) == sorted(load_images(digits100)[1].names)
    assert '00000/img00000000.png' in per_image
    assert all(rec['range'][0] <= v <= rec['range'][1] for v in per_image.values())
    # One short block: the summary, the sentence, where the files went.
    lines = r.stdout.strip().splitlines()
    assert len(lines) <= 6 and 'Recommended sigma_tn = 0.42 (range 0.25 to 0.84)' in r.stdout
    assert rec['explanation'] in lines and lines[-1].startswith('Wrote ')


def test_per_image_file_only_when_asked(digits100, tmp_path):
    dest = tmp_path / 'adv'
    (tmp_path / 'adv').mkdir()
    (dest / 'sigma_tn_per_image.json').write_text('{"stale": 1}') # left by an earlier --per-image run
    r = _run(f'--data={digits100}', f'--dest={dest}')
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in dest.iterdir()) == ['advice.json', 'advice.md', 'histogram.png']
    assert json.loads((dest / 'advice.json').read_text())['per_image_file'] is None


def test_dinov2_scale_is_reported_beside_the_pixel_recommendation(digits100, tmp_path):
    hub = tmp_path / 'hub'
    hub.mkdir()
    (hub / 'hubconf.py').write_text(HUBCONF)
    r = _run(f'--data={digits100}', '--detector=dinov2', f'--detector-path={hub}', '--arch=vitl14', f'--dest={tmp_path / "d"}')
    assert r.exit_code == 0, r.output
    advice = json.loads((tmp_path / 'd' / 'advice.json').read_text())
    fs = advice['feature_scale']
    assert advice['detector'] == 'dinov2' and fs['detector']['name'] == 'dinov2' and fs['detector']['feature_dim'] == 1024
    assert -1 <= fs['median_similarity'] <= 1 and fs['median_nn'] >= 0 and 'p50' in fs['quantiles']['similarity']
    # The recommendation is pixel noise from the pixel scale, the same as without the detector.
    assert advice['recommendation']['recommended'] == 0.42
    assert 'DINOv2 vitl14 features' in r.stdout and 'from the pixel scale' in r.stdout
    assert '## DINOv2 features (vitl14)' in (tmp_path / 'd' / 'advice.md').read_text()


def test_dinov2_without_weights_offline_is_one_line(digits100, tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch-home'))
    r = _run(f'--data={digits100}', '--detector=dinov2', f'--dest={tmp_path / "d"}')
    assert _one_error_line(r), r.output
    assert '--detector-path' in r.stderr and not (tmp_path / 'd' / 'advice.json').exists()


def _bad_inputs(tmp_path, digits100):
    corrupt = tmp_path / 'corrupt.zip'
    corrupt.write_bytes(b'PK\x03\x04 this is not a zip archive')
    two = tmp_path / 'two.zip'
    write_image_zip(load_images(digits100)[0][:2], None, two)
    text = tmp_path / 'file.txt'
    text.write_text('x')
    return {
        'missing': ([f'--data={tmp_path / "absent.zip"}'], 'not found'),
        'corrupt-zip': ([f'--data={corrupt}'], 'Cannot open zip'),
        'two-images': ([f'--data={two}'], 'at least 3 images'),
        'dest-is-a-file': ([f'--data={digits100}', f'--dest={text}'], 'not a directory'),
        'pilot-option-without-pilot': ([f'--data={digits100}', '--train-opt=--iters=10'], 'only to --pilot'),
        'arch-without-dinov2': ([f'--data={digits100}', '--arch=vitl14'], 'only to --detector=dinov2'),
    }


@pytest.mark.parametrize('case', ['missing', 'corrupt-zip', 'two-images', 'dest-is-a-file', 'pilot-option-without-pilot',
                                  'arch-without-dinov2'])
def test_bad_input_is_one_error_line(case, tmp_path, digits100):
    args, match = _bad_inputs(tmp_path, digits100)[case]
    r = _run(*args, f'--dest={tmp_path / "out"}') if not any(a.startswith('--dest') for a in args) else _run(*args)
    assert _one_error_line(r), r.output
    assert match in r.stderr
    assert not (tmp_path / 'out').exists()


def test_bad_input_on_the_real_command_line(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    p = subprocess.run([sys.executable, '-m', 'ambient.advise', f'--data={tmp_path / "absent.zip"}'], cwd=str(REPO),
                       env=env, capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 1 and p.stderr.startswith('Error: ') and p.stderr.count('\n') == 1, p.stderr
    assert 'Traceback' not in p.stderr

#----------------------------------------------------------------------------

def test_pilot_sigmas_are_edm_lo_recommended_hi():
    assert pilot.pilot_sigmas(dict(recommended=0.51, range=[0.25, 1.0])) == [
        (0.0, 'EDM'), (0.25, 'lo'), (0.51, 'recommended'), (1.0, 'hi')]
    assert pilot.pilot_sigmas(dict(recommended=0.5, range=[0.5, 1.0])) == [(0.0, 'EDM'), (0.5, 'lo, recommended'), (1.0, 'hi')]


def test_pilot_runs_the_four_models_and_reports_the_pareto_front(fake, monkeypatch):
    monkeypatch.setattr(sweep, 'default_tools', lambda cfg: fake.tools)
    data, heldout = fake.out.parent / 'train.zip', fake.out.parent / 'heldout.zip'
    dest = fake.out.parent / 'adv'
    r = _run(f'--data={data}', f'--dest={dest}', '--pilot', f'--heldout={heldout}', '--samples=6', '--train-opt=--iters=10')
    assert r.exit_code == 0, r.output
    advice = json.loads((dest / 'advice.json').read_text())
    lo, hi = advice['recommendation']['range']
    sigmas = [0.0, lo, advice['recommendation']['recommended'], hi]
    trained = [c['args'] for c in fake.calls() if c['tool'] == 'train']
    assert sorted(float(a.get('sigma_tn', 0)) for a in trained) == sorted(sigmas)
    assert all(a['iters'] == '10' and a['seed'] == '0' for a in trained)
    result = advice['pilot']
    assert result['outdir'] == str(dest / 'pilot') # default: inside --dest
    assert [r['sigma_tn'] for r in result['runs']] == sigmas and [r['role'] for r in result['runs']] == list(pilot.ROLES)
    # The front is the sweep's own (indices into its rows), as sigma_tn values.
    saved = json.loads((dest / 'pilot' / 'sweep.json').read_text())
    front = sorted(saved['rows'][i]['sigma_tn'] for i in saved['pareto_front'])
    assert front and result['front_sigma_tn'] == front
    assert [r['sigma_tn'] for r in result['runs'] if r['on_front']] == front
    # No run off the front is dominated by none of the front's: each is worse in quality or in copies than one of them.
    runs = result['runs']
    for off in (r for r in runs if not r['on_front']):
        assert any(f['fd'] <= off['fd'] and f['ratio_fraction'] <= off['ratio_fraction'] for f in runs if f['on_front'])
    listed = ', '.join(advisor.fmt(x) for x in front)
    assert f'On the Pareto front (FD_heldout vs memorized fraction): sigma_tn {listed}' in r.stdout
    assert '## Pilot sweep' in (dest / 'advice.md').read_text()
