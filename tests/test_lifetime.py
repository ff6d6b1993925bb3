"""Tests of torch_utils/lifetime.py: helper processes die with their parent, even a run SIGKILLed mid-start-up."""

import os
import pathlib
import pickle
import signal
import subprocess
import sys
import time
import uuid

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from test_train import REPO, assert_same_training, final_state, finish, run_train # pylint: disable=wrong-import-position
from torch_utils import lifetime # pylint: disable=wrong-import-position

pytestmark = pytest.mark.skipif(not sys.platform.startswith('linux'), reason='scans /proc; PR_SET_PDEATHSIG: Linux')

TAG = 'LIFETIME_TEST_TAG'
TRAIN = ['--arch=ddpmpp', '--cbase=16', '--cres=1', '--batch=16', '--workers=1', '--tick=1', '--snap=1', '--dump=1',
         '--lr_rampup=0', '--seed=3']

def tagged(tag):
    """Pids of live (non-zombie) processes whose environment holds TAG=tag: everything a run started, at any depth."""
    found = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/environ', 'rb') as f:
                env = f.read().split(b'\0')
            with open(f'/proc/{entry}/stat', 'rb') as f:
                zombie = f.read().rsplit(b')', 1)[1].split()[0] == b'Z'
        except OSError:
            continue
        if f'{TAG}={tag}'.encode() in env and not zombie:
            found.append(int(entry))
    return found

def assert_all_gone(tag, timeout=20):
    """Wait until no process of the tagged run is left; kill and report any that outlive the timeout."""
    deadline = time.time() + timeout
    while (left := tagged(tag)) and time.time() < deadline:
        time.sleep(0.1)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f'left running {timeout}s after the kill: {left}'

@pytest.fixture
def tag(monkeypatch):
    """A unique value of TAG in the environment of every process started from here on (run_train copies os.environ)."""
    value = uuid.uuid4().hex
    monkeypatch.setenv(TAG, value)
    monkeypatch.setenv('PYTHONUNBUFFERED', '1') # Progress lines arrive as printed: they time the kills.
    yield value
    for pid in tagged(value): # Never leave anything behind, even when the test failed.
        os.kill(pid, signal.SIGKILL)

@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    dest = tmp_path_factory.mktemp('data') / 'digits.zip'
    subprocess.run([sys.executable, str(REPO / 'dataset_tool.py'), 'convert', '--source=digits', f'--dest={dest}',
                    '--subset=100'], cwd=str(REPO), check=True, capture_output=True)
    return dest

def start_and_kill(args, tag, marker, delay=0.0, state_in=None):
    """Start train.py, SIGKILL its main process (only) once `marker` is printed (None: at once) and, with state_in, a
    training state is in that folder; then every process of the run must be gone within seconds."""
    proc = run_train(args, start_new_session=True)
    if marker is not None:
        for line in proc.stdout:
            if line.startswith(marker):
                break
        else:
            pytest.fail(f'train.py ended before printing {marker!r}')
    while state_in is not None and not list(state_in.glob('*/training-state-*.pt')):
        assert proc.poll() is None, 'train.py ended before writing a training state'
        time.sleep(0.05)
    time.sleep(delay)
    running = tagged(tag)
    t0 = time.time()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert_all_gone(tag)
    proc.stdout.close()
    return running, time.time() - t0

#----------------------------------------------------------------------------

def test_preexec_child_dies_with_parent(tag):
    # The sweep's stage children: a parent that starts `sleep` with the preexec_fn, then is SIGKILLed.
    code = ('import signal, subprocess; from torch_utils import lifetime; '
            'p = subprocess.Popen(["sleep", "60"], preexec_fn=lifetime.preexec_die_with_parent(signal.SIGTERM)); '
            'print(p.pid, flush=True); p.wait()')
    parent = subprocess.Popen([sys.executable, '-c', code], cwd=str(REPO), stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    child = int(parent.stdout.readline())
    assert child in tagged(tag)
    parent.kill()
    parent.communicate()
    assert_all_gone(tag, timeout=5)

def test_watchdog_follows_a_process_that_is_not_the_parent(tag):
    # A worker started by a forkserver watches the main process, not its parent; a pid already gone ends it at once.
    code = ('import sys, time; from torch_utils import lifetime; '
            'lifetime.die_with_parent(int(sys.argv[1])); time.sleep(60)')
    dead = subprocess.Popen(['true'])
    dead.wait()
    assert subprocess.run([sys.executable, '-c', code, str(dead.pid)], cwd=str(REPO), timeout=30).returncode == 1
    other = subprocess.Popen(['sleep', '60'])
    child = subprocess.Popen([sys.executable, '-c', code, str(other.pid)], cwd=str(REPO))
    time.sleep(2)
    assert child.poll() is None
    other.kill()
    other.wait()
    assert child.wait(timeout=10) == 1

def _record_worker(worker_id):
    os.environ['RECORDED'] = str(worker_id)

def test_worker_init_composes_and_pickles():
    assert 'worker_init_fn' not in lifetime.data_loader_kwargs(dict(num_workers=0))
    opts = lifetime.data_loader_kwargs(dict(num_workers=2, worker_init_fn=_record_worker))
    init = pickle.loads(pickle.dumps(opts['worker_init_fn'])) # As spawn sends it to a worker.
    assert init.parent_pid == os.getpid() and init.pdeathsig and init.user_fn is _record_worker
    assert lifetime.data_loader_kwargs(opts)['worker_init_fn'] is opts['worker_init_fn'] # Not wrapped twice.

@pytest.mark.parametrize('marker', [None, 'Constructing network...', 'Setting up optimizer...', 'tick '])
def test_sigkill_during_startup_or_training_leaves_no_process(digits, tmp_path, tag, marker):
    args = [f'--outdir={tmp_path}', f'--data={digits}', '--iters=100000'] + TRAIN
    running, gone_after = start_and_kill(args, tag, marker)
    if marker is not None and marker != 'Constructing network...':
        assert len(running) >= 3, running # Main process, resource tracker and data-loader worker were all there.
    print(f'{marker}: {len(running)} processes, all gone {gone_after:.1f}s after the kill')

@pytest.mark.slow
def test_sigkill_mid_training_then_resume_is_exact(digits, tmp_path, tag):
    # The first training state comes at the end of tick 1 (step 64: tick 0 is step 1, then 1-kimg ticks of 16 images);
    # the kill lands in the steps after it.
    args = [f'--data={digits}', '--iters=70'] + TRAIN
    straight, killed = tmp_path / 'straight', tmp_path / 'killed'
    finish(run_train([f'--outdir={straight}'] + args))
    start_and_kill([f'--outdir={killed}', f'--data={digits}', '--iters=100000'] + TRAIN, tag, 'tick 1 ', delay=0.3,
                   state_in=killed)
    killed_dir = next(killed.iterdir())
    assert final_state(killed_dir)['cur_nimg'] == 64 * 16
    finish(run_train([f'--outdir={killed}', f'--resume={killed_dir}'] + args))
    resumed = [d for d in killed.iterdir() if d != killed_dir][0]
    assert_same_training(final_state(resumed), final_state(next(straight.iterdir())))
