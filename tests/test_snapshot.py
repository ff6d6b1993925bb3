"""Tests of training/snapshot.py: pickles, .safetensors round trips, refusal of bad files."""

import inspect
import json
import os
import pickle
import struct

import pytest
import torch

import dnnlib
from training.snapshot import load_network, save_network_safetensors

networks = pytest.importorskip('training.networks')

#----------------------------------------------------------------------------

def _tiny_net(label_dim=0, seed=0):
    torch.manual_seed(seed)
    net = networks.EDMPrecond(img_resolution=8, img_channels=1, label_dim=label_dim, model_type='SongUNet', model_channels=8,
                              channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.eval()


def _outputs(net):
    g = torch.Generator().manual_seed(5)
    x = torch.randn([2, 1, 8, 8], generator=g)
    with torch.no_grad():
        return net(x, torch.tensor([0.5, 3.0]))


@pytest.fixture
def net():
    return _tiny_net()

#----------------------------------------------------------------------------

def test_safetensors_round_trip(net, tmp_path):
    path = tmp_path / 'net.safetensors'
    save_network_safetensors(net, str(path))
    assert os.listdir(tmp_path) == ['net.safetensors']
    loaded = load_network(str(path))
    assert type(loaded).__name__ == 'EDMPrecond' and type(loaded).__module__ == 'training.networks'
    assert not loaded.training
    assert torch.equal(_outputs(loaded), _outputs(net))


def test_safetensors_from_unpickled_net_names_the_public_class(net, tmp_path):
    pkl = tmp_path / 'snap.pkl'
    # Edit the carried source (same length) so that unpickling builds a private module, as in a fresh process.
    data = pickle.dumps(dict(ema=net, loss_fn=None))
    line = next(l for l in inspect.getsource(networks).splitlines() if l.strip().startswith('# ')).encode() # a comment line
    assert line in data
    pkl.write_bytes(data.replace(line, line[:-1] + (b'X' if line[-1:] != b'X' else b'Y'), 1))
    from_pickle = load_network(str(pkl))
    assert type(from_pickle).__module__ != 'training.networks' # Came from the pickle's private module.
    st = tmp_path / 'snap.safetensors'
    save_network_safetensors(from_pickle, str(st))
    header_len = struct.unpack('<Q', st.read_bytes()[:8])[0]
    meta = json.loads(st.read_bytes()[8:8 + header_len])['__metadata__']
    assert meta['class_name'] == 'training.networks.EDMPrecond'
    assert json.loads(meta['init_kwargs'])['model_channels'] == 8
    assert torch.equal(_outputs(load_network(str(st))), _outputs(net))


def test_pickle_variants(net, tmp_path):
    bare = tmp_path / 'bare.pkl'
    bare.write_bytes(pickle.dumps(net))
    assert torch.equal(_outputs(load_network(str(bare))), _outputs(net))
    url = (tmp_path / 'dict.pkl').as_uri()
    (tmp_path / 'dict.pkl').write_bytes(pickle.dumps(dict(ema=net)))
    assert torch.equal(_outputs(load_network(url)), _outputs(net))

#----------------------------------------------------------------------------

def _write_safetensors(path, tensors, metadata):
    import safetensors.torch
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)


def test_bad_files_raise_user_error(net, tmp_path):
    cases = {}
    cases['missing'] = str(tmp_path / 'nope.pkl')
    (tmp_path / 'corrupt.pkl').write_bytes(b'not a pickle at all')
    cases['corrupt'] = str(tmp_path / 'corrupt.pkl')
    (tmp_path / 'noema.pkl').write_bytes(pickle.dumps(dict(loss_fn=1)))
    cases['no ema'] = str(tmp_path / 'noema.pkl')
    (tmp_path / 'list.pkl').write_bytes(pickle.dumps([1, 2]))
    cases['not a module'] = str(tmp_path / 'list.pkl')
    (tmp_path / 'trunc.safetensors').write_bytes(b'\x10\x00')
    cases['truncated'] = str(tmp_path / 'trunc.safetensors')
    _write_safetensors(tmp_path / 'nometa.safetensors', dict(a=torch.zeros(2)), None)
    cases['no metadata'] = str(tmp_path / 'nometa.safetensors')
    # A file may not name an arbitrary callable: that would run code on load.
    _write_safetensors(tmp_path / 'evil.safetensors', dict(a=torch.zeros(2)), dict(class_name='os.system', init_kwargs='{"command": "true"}'))
    cases['foreign class'] = str(tmp_path / 'evil.safetensors')
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    kwargs = dict(net.init_kwargs, model_channels=16)
    _write_safetensors(tmp_path / 'mismatch.safetensors', state, dict(class_name='training.networks.EDMPrecond', init_kwargs=json.dumps(kwargs)))
    cases['weights do not fit'] = str(tmp_path / 'mismatch.safetensors')
    for what, path in cases.items():
        with pytest.raises(dnnlib.util.UserError):
            load_network(path)
            pytest.fail(f'{what}: no error')


def test_save_refuses_non_persistent_modules(tmp_path):
    with pytest.raises(ValueError):
        save_network_safetensors(torch.nn.Linear(2, 2), str(tmp_path / 'x.safetensors'))
    assert not os.listdir(tmp_path)

#----------------------------------------------------------------------------
