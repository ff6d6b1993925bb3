"""Tests of ambient/report.py and ambient/experiments/report.py: the HTML page of a set of runs, from real tiny runs, checked in headless Chromium."""

import base64
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

from ambient import report as report_cli
from ambient.experiments import report

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ['--arch=ddpmpp', '--cbase=16', '--cres=1', '--batch=8', '--tick=1', '--snap=1', '--dump=1', '--workers=1',
        '--iters=4', '--seed=1', '--augment=0', '--lr_rampup=0', '--nosubdir']

def _run(args, **popen):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.Popen([sys.executable] + args, env=env, cwd=str(REPO), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)

def _finish(*procs):
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]

@pytest.fixture(scope='module')
def sweep_dir(tmp_path_factory):
    """A sweep-shaped folder from the real CLIs: 2-tick EDM and ambient runs on 20 real digits, and the ambient
    run's snapshot sampled (generate.py) and measured (ambient.memorization); quality.json is written by hand."""
    root = tmp_path_factory.mktemp('report')
    data = root / 'digits.zip'
    _finish(_run(['dataset_tool.py', 'convert', '--source=digits', f'--dest={data}', '--subset=20']))
    sweep = root / 'sweep'
    _finish(_run(['train.py', f'--outdir={sweep / "runs" / "sigma_tn-0"}', f'--data={data}'] + TINY),
            _run(['train.py', f'--outdir={sweep / "runs" / "sigma_tn-0.5"}', f'--data={data}', '--loss=ambient',
                  '--sigma_tn=0.5'] + TINY))
    folder = sweep / 'evals' / 'sigma_tn-0.5' / 'snapshot-000000'
    folder.mkdir(parents=True)
    _finish(_run(['generate.py', f'--network={sweep / "runs" / "sigma_tn-0.5" / "network-snapshot-000000.safetensors"}',
                  f'--outdir={folder / "samples"}', '--seeds=0-15', '--steps=4', f'--grid={folder / "grid.png"}']))
    _finish(_run(['-m', 'ambient.memorization', 'calc', f'--images={folder / "samples"}', f'--data={data}',
                  '--detector=pixel', f'--dest={folder / "memorization"}']))
    (folder / 'quality.json').write_text(json.dumps({'FD_digits': 12.5, 'notes': []}))
    return sweep

def _embedded_pngs(page):
    """The decoded PNG images embedded in the page as data URIs."""
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]

#----------------------------------------------------------------------------

def _fake_run(path, losses, ambient=True):
    """A run directory with just stats.jsonl and training_options.json (what the page reads)."""
    path.mkdir(parents=True)
    lines = []
    for i, loss in enumerate(losses):
        row = {'Progress/kimg': dict(num=1, mean=(i + 1) * 0.5, std=0), 'Loss/loss': dict(num=64, mean=loss, std=0.1)}
        if ambient:
            row['Loss/ambient/below_sigma_tn'] = dict(num=5, mean=loss * 0.8, std=0)
            row['Loss/ambient/above_sigma_tn'] = dict(num=3, mean=loss * 1.3, std=0)
            row['Loss/ambient/fraction_above'] = dict(num=8, mean=0.375, std=0)
        lines.append(json.dumps(row))
    (path / 'stats.jsonl').write_text('\n'.join(lines) + '\n{"torn": ') # A run killed mid-write leaves a torn line.
    loss_kwargs = dict(class_name='ambient.loss.AmbientEDMLoss', sigma_tn=0.5) if ambient else dict(class_name='training.loss.EDMLoss')
    (path / 'training_options.json').write_text(json.dumps(dict(loss_kwargs=loss_kwargs, batch_size=64, seed=2)))
    return path

def test_page_of_plain_run_directories(tmp_path):
    a = _fake_run(tmp_path / 'runs-a' / '00000-edm', [1.0, 0.8, 0.7], ambient=False)
    b = _fake_run(tmp_path / 'runs-b' / '00003-ambient', [1.1, 0.9, 0.75])
    dest = tmp_path / 'html'
    result = CliRunner().invoke(report_cli.main, [str(a), str(b), f'--dest={dest}', '--title=Two <runs>'])
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(dest)) == ['index.html', 'loss.png', 'regimes.png'] # No evaluations: no such figure.
    page = (dest / 'index.html').read_text()
    assert '<title>Two &lt;runs&gt;</title>' in page and '00000-edm' in page and '00003-ambient' in page
    assert 'AmbientEDMLoss' in page and 'EDMLoss' in page and 'No evaluated snapshots' in page
    assert not re.search(r'(src|href)="(?!data:|#)', page) # Self-contained: nothing but data URIs and anchors.
    pngs = _embedded_pngs(page)
    assert len(pngs) == 2 and pngs[0] == (dest / 'loss.png').read_bytes()
    assert report.series(report.read_stats(b / 'stats.jsonl'), 'Loss/ambient/above_sigma_tn') == ([0.5, 1.0, 1.5], pytest.approx([1.43, 1.17, 0.975]))

def test_bad_arguments_are_one_error_line(tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    for args, message in [([str(tmp_path / 'missing')], 'no such directory'), ([str(empty)], 'no stats.jsonl')]:
        result = CliRunner().invoke(report_cli.main, args + [f'--dest={tmp_path / "html"}'])
        errors = [line for line in result.output.splitlines() if line.startswith('Error:')]
        assert result.exit_code == 1 and len(errors) == 1 and message in errors[0], result.output
        assert 'Traceback' not in result.output
    assert not (tmp_path / 'html').exists()

@pytest.mark.slow
def test_page_of_real_runs_shows_curves_regimes_grids_and_memorization(sweep_dir, tmp_path):
    dest = tmp_path / 'html'
    proc = subprocess.run([sys.executable, '-m', 'ambient.report', str(sweep_dir), f'--dest={dest}'], cwd=str(REPO),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(os.listdir(dest)) == ['evaluations.png', 'index.html', 'loss.png', 'regimes.png']
    page = (dest / 'index.html').read_text()
    for text in ('sigma_tn-0', 'sigma_tn-0.5', 'AmbientEDMLoss', 'snapshot at kimg 0', 'memorized fraction',
                 'FD_digits', 'samples (grid.png)', 'nearest.png', 'Ambient regimes'):
        assert text in page, text
    evals = sweep_dir / 'evals' / 'sigma_tn-0.5' / 'snapshot-000000'
    pngs = _embedded_pngs(page)
    for path in (evals / 'grid.png', evals / 'memorization' / 'nearest.png', dest / 'loss.png', dest / 'regimes.png'):
        assert path.read_bytes() in pngs, path
    metrics = json.loads((evals / 'memorization' / 'metrics.json').read_text())
    assert f'{metrics["similarity_mean"]:.4g}' in page

@pytest.mark.slow
@pytest.mark.skipif(shutil.which('chromium') is None, reason='Chromium is not installed (apt-get install chromium)')
def test_page_renders_in_headless_chromium(sweep_dir, tmp_path):
    dest = tmp_path / 'html'
    index = report.write_report([str(sweep_dir)], str(dest))
    chromium = ['chromium', '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--hide-scrollbars',
                f'--user-data-dir={tmp_path / "profile"}']
    # Every image decodes: a copy of the page with a probe that writes the count into the title, read from the DOM.
    probe = tmp_path / 'probe.html'
    probe.write_text(pathlib.Path(index).read_text().replace('</body>', (
        "<script>window.addEventListener('load', function () { var im = Array.from(document.images);"
        " document.title = 'IMAGES ' + im.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length"
        " + '/' + im.length; });</script></body>")))
    dom = subprocess.run(chromium + ['--dump-dom', probe.as_uri()], capture_output=True, text=True, timeout=120, check=False).stdout
    title = re.search(r'<title>(.*?)</title>', dom)
    assert title, dom[:2000]
    loaded, total = (int(x) for x in title.group(1).split()[1].split('/'))
    assert total >= 6 and loaded == total, title.group(1)

    # The page itself, as a user opens it (file://, no server): a screenshot that is neither blank nor grey only.
    shot = tmp_path / 'page.png'
    subprocess.run(chromium + [f'--screenshot={shot}', '--window-size=1200,2000', pathlib.Path(index).as_uri()],
                   capture_output=True, text=True, timeout=120, check=False)
    pixels = np.asarray(PIL.Image.open(shot).convert('RGB')).astype(np.int32)
    assert pixels.shape[:2] == (2000, 1200)
    assert (pixels.min(axis=2) < 200).mean() > 0.02 # Text, tables and figures, not a blank page.
    colourful = (pixels.max(axis=2) - pixels.min(axis=2)) > 80
    assert colourful.sum() > 500 # The matplotlib curves' colours.
