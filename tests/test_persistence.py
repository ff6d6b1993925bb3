"""Persistence: EDM's pickle format (version 6), source embedded, loadable without the project on sys.path."""

import ast
import pickle
import pickletools
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from torch_utils import persistence

# A module in EDM's style, as a user's EDM checkout would have written it (own text, same shape).
MODULE_SRC = textwrap.dedent('''
    import torch
    from torch_utils import persistence

    @persistence.persistent_class
    class Scale(torch.nn.Module):
        def __init__(self, channels, gain=2.0):
            super().__init__()
            self.gain = gain
            self.weight = torch.nn.Parameter(torch.arange(channels, dtype=torch.float32))

        def forward(self, x):
            return x * self.weight * self.gain

    @persistence.persistent_class
    class Net(torch.nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.inner = Scale(channels, gain=3.0)
            self.register_buffer('offset', torch.ones(channels))

        def forward(self, x):
            return self.inner(x) + self.offset
''')

def _write_module(tmp_path, name='edm_style_net'):
    moddir = tmp_path / 'mods'
    moddir.mkdir(exist_ok=True)
    (moddir / f'{name}.py').write_text(MODULE_SRC)
    return moddir

def _minimal_env(tmp_path, repo_dir):
    """A folder holding only dnnlib/ and torch_utils/: what a user's EDM-like checkout provides."""
    env = tmp_path / 'minimal'
    env.mkdir()
    for pkg in ('dnnlib', 'torch_utils'):
        shutil.copytree(repo_dir / pkg, env / pkg, ignore=shutil.ignore_patterns('__pycache__'))
    return env

def _run(code, path_entries, cwd):
    # -I isolates from PYTHONPATH and the script's directory, so only path_entries can be imported.
    prelude = 'import sys; sys.path[:0] = %r\n' % [str(p) for p in path_entries]
    return subprocess.run([sys.executable, '-I', '-c', prelude + code], cwd=cwd, capture_output=True, text=True, timeout=120)

def test_pickle_format_matches_edm(tmp_path, repo_dir):
    sys.path.insert(0, str(_write_module(tmp_path)))
    try:
        import edm_style_net # pylint: disable=import-outside-toplevel
        net = edm_style_net.Net(4)
    finally:
        sys.path.pop(0)
    data = pickle.dumps(net)
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(data)]
    strings = [arg for name, arg in ops if isinstance(arg, str)]
    assert 'torch_utils.persistence' in strings and '_reconstruct_persistent_obj' in strings
    reduced = net.__reduce__()
    assert reduced[0] is persistence._reconstruct_persistent_obj
    meta = reduced[1][0]
    assert set(meta) == {'type', 'version', 'module_src', 'class_name', 'state'}
    assert meta['type'] == 'class' and meta['version'] == 6 and meta['class_name'] == 'Net'
    assert meta['module_src'] == MODULE_SRC
    assert net.init_args == (4,) and net.init_kwargs == {}
    assert net.inner.init_kwargs == {'gain': 3.0}

def test_loads_in_fresh_process_without_project(tmp_path, repo_dir):
    moddir = _write_module(tmp_path)
    pkl = tmp_path / 'net.pkl'
    out = _run(textwrap.dedent(f'''
        import pickle, torch, edm_style_net
        net = edm_style_net.Net(3)
        with torch.no_grad():
            net.inner.weight.add_(0.5)
        pickle.dump(net, open({str(pkl)!r}, 'wb'))
    '''), [repo_dir, moddir], cwd=tmp_path)
    assert out.returncode == 0, out.stderr

    minimal = _minimal_env(tmp_path, repo_dir)
    out = _run(textwrap.dedent(f'''
        import importlib.util, pickle, sys, torch
        assert importlib.util.find_spec('edm_style_net') is None
        assert importlib.util.find_spec('training') is None
        net = pickle.load(open({str(pkl)!r}, 'rb'))
        y = net(torch.ones(3))
        print(y.tolist(), type(net).__module__.startswith('_imported_module_'), net.init_args)
    '''), [minimal], cwd=minimal)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split('\n')[0] == '[2.5, 5.5, 8.5] True (3,)'

def test_network_pickle_loads_without_project(tmp_path, repo_dir):
    networks = pytest.importorskip('training.networks')
    net = networks.EDMPrecond(img_resolution=8, img_channels=1, model_type='SongUNet', model_channels=16,
        channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0).eval()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.5, 3.0])
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01)
        expected = net(x, sigma)
    pkl = tmp_path / 'snap.pkl'
    with open(pkl, 'wb') as f:
        pickle.dump(dict(ema=net), f)
    torch.save(dict(x=x, sigma=sigma), tmp_path / 'inputs.pt')
    minimal = _minimal_env(tmp_path, repo_dir)
    out = _run(textwrap.dedent(f'''
        import pickle, torch
        net = pickle.load(open({str(pkl)!r}, 'rb'))['ema']
        d = torch.load({str(tmp_path / 'inputs.pt')!r})
        with torch.no_grad():
            torch.save(net(d['x'], d['sigma']), {str(tmp_path / 'out.pt')!r})
    '''), [minimal], cwd=minimal)
    assert out.returncode == 0, out.stderr
    assert torch.equal(torch.load(tmp_path / 'out.pt'), expected)

def test_reloaded_object_pickles_again(tmp_path):
    sys.path.insert(0, str(_write_module(tmp_path, 'edm_style_net2')))
    try:
        import edm_style_net2 # pylint: disable=import-outside-toplevel
        net = edm_style_net2.Net(2)
    finally:
        sys.path.pop(0)
    once = pickle.loads(pickle.dumps(net))
    twice = pickle.loads(pickle.dumps(once))
    assert type(once) is type(twice) # The same source maps back to the same private module.
    assert torch.equal(twice(torch.ones(2)), net(torch.ones(2)))
    assert persistence.is_persistent(twice) and persistence.is_persistent(type(twice))

def test_import_hook_can_patch_source(tmp_path):
    sys.path.insert(0, str(_write_module(tmp_path, 'edm_style_net3')))
    try:
        import edm_style_net3 # pylint: disable=import-outside-toplevel
        data = pickle.dumps(edm_style_net3.Net(2))
    finally:
        sys.path.pop(0)
    def hook(meta):
        meta.module_src = meta.module_src.replace('+ self.offset', '- self.offset')
        return meta
    persistence.import_hook(hook)
    try:
        net = pickle.loads(data)
    finally:
        persistence._import_hooks.remove(hook)
    assert net(torch.ones(2)).tolist() == [-1.0, 2.0]

def test_unpicklable_constructor_argument_is_refused(tmp_path):
    sys.path.insert(0, str(_write_module(tmp_path, 'edm_style_net4')))
    try:
        import edm_style_net4 # pylint: disable=import-outside-toplevel
        with pytest.raises(Exception):
            edm_style_net4.Scale(2, gain=lambda: 1) # A lambda cannot be pickled.
    finally:
        sys.path.pop(0)

# Snapshot pickles are executed inside NVIDIA's EDM checkout by its generate.py, whose torch_utils has
# only persistence, misc.constant and training_stats.report of what we offer: keep persistent modules to that subset.
PERSISTENT_MODULES = ['training/networks.py', 'training/loss.py', 'training/augment.py', 'ambient/method/loss.py', 'ambient/baselines/loss.py']
ALLOWED_IMPORTS = {'numpy', 'torch', 'torch.nn.functional', 'torch_utils', 'torch_utils.persistence', 'torch_utils.misc',
                   'torch_utils.training_stats', 'math'}

@pytest.mark.parametrize('relpath', PERSISTENT_MODULES)
def test_persistent_modules_import_only_edm_api(repo_dir, relpath):
    path = repo_dir / relpath
    if not path.exists():
        pytest.skip(f'{relpath} not written yet')
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module] + [f'{node.module}.{a.name}' for a in node.names if node.module == 'torch_utils']
        else:
            continue
        for name in names:
            assert name in ALLOWED_IMPORTS, f'{relpath}: import of {name} would break loading in EDM'
        if isinstance(node, ast.ImportFrom) and node.module == 'torch_utils':
            assert {a.name for a in node.names} <= {'persistence', 'misc', 'training_stats'}
    src = path.read_text()
    for attr in set(__import__('re').findall(r'\bmisc\.(\w+)', src)):
        assert attr == 'constant', f'{relpath}: misc.{attr} does not exist in EDM'
    for attr in set(__import__('re').findall(r'\btraining_stats\.(\w+)', src)):
        assert attr == 'report', f'{relpath}: use only training_stats.report (EDM has it with the same signature)'
