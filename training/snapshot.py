"""Load networks from EDM/our pickles or .safetensors snapshots (local or URL); write .safetensors snapshots."""

import io
import json
import os
import pickle
import struct

import torch

import dnnlib

#----------------------------------------------------------------------------
# Only classes from this module may be built from a .safetensors file: the file names the class,
# and allowing any dotted name would let a weights file call arbitrary functions.

SAFE_CLASS_PREFIX = 'training.networks.'


def _read_bytes(path_or_url, verbose):
    with dnnlib.util.open_url(path_or_url, verbose=verbose) as f:
        return f.read()


def _safetensors_metadata(data):
    """The `__metadata__` dict of a serialized safetensors file (header: u64 length + JSON)."""
    if len(data) < 8:
        raise ValueError('file too short')
    (header_len,) = struct.unpack('<Q', data[:8])
    if header_len > len(data) - 8:
        raise ValueError('header length beyond end of file')
    header = json.loads(data[8:8 + header_len].decode('utf-8'))
    return header.get('__metadata__', {}) or {}


def load_network_safetensors(path_or_url, device='cpu', verbose=True):
    """Build the network named in a .safetensors snapshot's metadata and load its weights (strict); runs no stored code."""
    import safetensors.torch # Imported lazily: pickles do not need it.
    data = _read_bytes(path_or_url, verbose)
    try:
        meta = _safetensors_metadata(data)
        state_dict = safetensors.torch.load(data)
    except Exception as e: # pylint: disable=broad-except
        raise dnnlib.util.UserError(f'Cannot read safetensors file {path_or_url}: {e}') from None
    class_name = meta.get('class_name')
    if not class_name or 'init_kwargs' not in meta:
        raise dnnlib.util.UserError(f'{path_or_url} has no class_name/init_kwargs metadata; it is not a network snapshot')
    if not class_name.startswith(SAFE_CLASS_PREFIX):
        raise dnnlib.util.UserError(f'{path_or_url} names class {class_name!r}; only {SAFE_CLASS_PREFIX}* classes can be loaded')
    try:
        init_kwargs = json.loads(meta['init_kwargs'])
    except json.JSONDecodeError as e:
        raise dnnlib.util.UserError(f'{path_or_url} has invalid init_kwargs JSON: {e}') from None
    try:
        net = dnnlib.util.construct_class_by_name(class_name=class_name, **init_kwargs)
    except (ImportError, AttributeError, TypeError, ValueError) as e:
        raise dnnlib.util.UserError(f'Cannot construct {class_name} from {path_or_url}: {e}') from None
    try:
        net.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise dnnlib.util.UserError(f'Weights in {path_or_url} do not fit {class_name}: {" ".join(first[:2])}') from None
    return net.eval().requires_grad_(False).to(device)


def load_network_pickle(path_or_url, device='cpu', verbose=True):
    """Load the `ema` network of an EDM/our snapshot pickle, or a bare pickled module."""
    if dnnlib.util.is_url(path_or_url) and not path_or_url.startswith('file://') and verbose:
        print(f'Note: {path_or_url} is a pickle; loading it runs the code it carries. Load only pickles you trust.')
    data = _read_bytes(path_or_url, verbose)
    name = os.path.basename(str(path_or_url).split('?')[0])
    if name.startswith('training-state-') or data[:2] == b'PK' and b'data.pkl' in data[:4096]:
        raise dnnlib.util.UserError(f'{path_or_url} is a training-state file (for train.py --resume), not a network '
                                    'snapshot; give network-snapshot-*.pkl or .safetensors')
    try:
        obj = pickle.load(io.BytesIO(data))
    except Exception as e: # pylint: disable=broad-except
        raise dnnlib.util.UserError(f'Cannot unpickle network from {path_or_url}: {e.__class__.__name__}: {e}') from None
    if isinstance(obj, dict):
        if 'ema' not in obj:
            raise dnnlib.util.UserError(f'{path_or_url} is a pickled dict without an "ema" network (keys: {sorted(obj)})')
        obj = obj['ema']
    if not isinstance(obj, torch.nn.Module):
        raise dnnlib.util.UserError(f'{path_or_url} does not hold a network (found {type(obj).__name__})')
    return obj.eval().requires_grad_(False).to(device)


def load_network(path_or_url, device='cpu', verbose=True):
    """Load a network from a .pkl (EDM or ours), a .safetensors snapshot, local or URL; eval mode on `device`."""
    if not isinstance(path_or_url, str) or not path_or_url:
        raise dnnlib.util.UserError(f'Invalid network path or URL: {path_or_url!r}')
    if path_or_url.split('?')[0].lower().endswith('.safetensors'):
        return load_network_safetensors(path_or_url, device, verbose)
    return load_network_pickle(path_or_url, device, verbose)

#----------------------------------------------------------------------------

def save_network_safetensors(net, path):
    """Write `net`'s weights as .safetensors with metadata class_name and init_kwargs (JSON); atomic."""
    import safetensors.torch
    if not hasattr(net, 'init_kwargs'):
        raise ValueError(f'{type(net).__name__} is not a persistent class: its constructor arguments are unknown')
    if getattr(net, 'init_args', ()):
        raise ValueError(f'{type(net).__name__} was constructed with positional arguments; use keywords')
    # A net unpickled from a snapshot lives in a private module; its class is still the one in training.networks.
    class_name = SAFE_CLASS_PREFIX + type(net).__name__
    try:
        init_kwargs = json.dumps(dict(net.init_kwargs), sort_keys=True)
    except TypeError as e:
        raise ValueError(f'init_kwargs of {type(net).__name__} are not JSON-serialisable: {e}') from None
    state_dict = {k: v.detach().to('cpu').contiguous().clone() for k, v in net.state_dict().items()}
    metadata = dict(format='pt', class_name=class_name, init_kwargs=init_kwargs)
    dirname = os.path.dirname(os.path.abspath(path))
    os.makedirs(dirname, exist_ok=True)
    with dnnlib.util.atomic_output(path) as tmp:
        safetensors.torch.save_file(state_dict, tmp, metadata=metadata)

#----------------------------------------------------------------------------
