"""Smoke tests of bench/train_speed.py and bench/sample_speed.py: every path runs and is reported next to EDM's."""

import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_bench(script, *args):
    out = subprocess.run([sys.executable, str(REPO / 'bench' / script), *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_train_speed_reports_each_path_against_edm():
    out = run_bench('train_speed.py', '--cbase=8', '--cres=1', '--batch=8', '--modes=ours,fused,bf16', '--steps=1',
                    '--rounds=1', '--warmup=0', '--no-memory')
    rows = {m.group(1): float(m.group(2)) for m in re.finditer(r'^(\S+)\s+[\d.]+ img/s\s+x\s*([\d.]+) vs EDM', out, re.M)}
    assert set(rows) == {'edm', 'ours', 'fused', 'bf16'} and rows['edm'] == 1.0
    assert all(r > 0 for r in rows.values())


def test_sample_speed_reports_image_differences_and_memory():
    out = run_bench('sample_speed.py', '--batch=2', '--steps=2', '--repeats=1', '--modes=ours,bf16', '--memory')
    ours = next(line for line in out.splitlines() if line.startswith('ours '))
    assert 'images vs EDM: identical' in ours # The default path is EDM's to the bit.
    peaks = [float(x) for x in re.findall(r'peak\s+([\d.]+) GB', out)]
    assert len(peaks) == 3 and all(0.05 < p < 8 for p in peaks)
