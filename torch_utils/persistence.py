"""Pickle classes together with the source of their module, in EDM's format (version 6).

A class decorated with `persistent_class` pickles as a call to `_reconstruct_persistent_obj(meta)`
where `meta` holds the full source of the class's module, the class name and the instance state.
Unpickling executes that source in a fresh private module, so a snapshot loads even when the code
that wrote it has changed or is absent. Pickles written by NVIDIA's EDM and by this project use the same
entry point and `meta` layout, so each loads the other's files. Only modules that the pickled source
itself imports (e.g. `torch_utils.persistence`) must be importable at load time.
"""

import copy
import inspect
import io
import pickle
import sys
import types
import uuid

import dnnlib

_version = 6                    # Format version; EDM's loader asserts this exact number.
_decorators = set()             # Every class produced by persistent_class().
_import_hooks = []              # Callables that may rewrite meta before reconstruction.
_module_to_src_dict = dict()    # module -> source text
_src_to_module_dict = dict()    # source text -> module

#----------------------------------------------------------------------------

def persistent_class(orig_class):
    """Class decorator: instances pickle with their module's source and remember their constructor arguments."""
    assert isinstance(orig_class, type)
    if is_persistent(orig_class):
        return orig_class
    assert orig_class.__module__ in sys.modules
    orig_module = sys.modules[orig_class.__module__]
    orig_module_src = _module_to_src(orig_module)

    class Decorator(orig_class):
        _orig_module_src = orig_module_src
        _orig_class_name = orig_class.__name__

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            record = getattr(self, '_record_init_args', True)
            self._init_args = copy.deepcopy(args) if record else None
            self._init_kwargs = copy.deepcopy(kwargs) if record else None
            # The class must be reachable by name in its module, or the pickle could never be loaded.
            assert orig_class.__name__ in orig_module.__dict__
            _check_pickleable(self.__reduce__())

        @property
        def init_args(self):
            """Positional constructor arguments (a deep copy)."""
            assert self._init_args is not None
            return copy.deepcopy(self._init_args)

        @property
        def init_kwargs(self):
            """Keyword constructor arguments (a deep copy, as an EasyDict)."""
            assert self._init_kwargs is not None
            return dnnlib.EasyDict(copy.deepcopy(self._init_kwargs))

        def __reduce__(self):
            fields = list(super().__reduce__())
            fields += [None] * max(3 - len(fields), 0)
            if fields[0] is not _reconstruct_persistent_obj:
                meta = dict(type='class', version=_version, module_src=self._orig_module_src,
                    class_name=self._orig_class_name, state=fields[2])
                fields[0] = _reconstruct_persistent_obj
                fields[1] = (meta,)
                fields[2] = None
            return tuple(fields)

    Decorator.__name__ = orig_class.__name__
    Decorator.__qualname__ = orig_class.__qualname__
    Decorator.__module__ = orig_class.__module__
    _decorators.add(Decorator)
    return Decorator

#----------------------------------------------------------------------------

def is_persistent(obj):
    """True if obj is a persistent class or an instance of one."""
    try:
        if obj in _decorators:
            return True
    except TypeError: # Unhashable objects cannot be classes.
        pass
    return type(obj) in _decorators # pylint: disable=unidiomatic-typecheck

def import_hook(hook):
    """Register hook(meta) -> meta, called on every persistent object before it is rebuilt (to patch old sources)."""
    assert callable(hook)
    _import_hooks.append(hook)

#----------------------------------------------------------------------------

def _reconstruct_persistent_obj(meta):
    """Unpickling entry point named inside every persistent pickle: rebuild the object from its source and state."""
    meta = dnnlib.EasyDict(meta)
    meta.state = dnnlib.EasyDict(meta.state)
    for hook in _import_hooks:
        meta = hook(meta)
        assert meta is not None
    if meta.version != _version:
        raise pickle.UnpicklingError(f'Unsupported persistence format version {meta.version} (expected {_version})')
    if meta.type != 'class':
        raise pickle.UnpicklingError(f'Unsupported persistent object type {meta.type!r}')
    module = _src_to_module(meta.module_src)
    cls = persistent_class(module.__dict__[meta.class_name])
    obj = cls.__new__(cls)
    setstate = getattr(obj, '__setstate__', None)
    if callable(setstate):
        setstate(meta.state) # pylint: disable=not-callable
    else:
        obj.__dict__.update(meta.state)
    return obj

def _module_to_src(module):
    """Source text of a module (cached, so a module executed from a pickle maps back to its exact text)."""
    src = _module_to_src_dict.get(module, None)
    if src is None:
        src = inspect.getsource(module)
        _module_to_src_dict[module] = src
        _src_to_module_dict[src] = module
    return src

def _src_to_module(src):
    """The module built from this source text, executing it once in a fresh private module."""
    module = _src_to_module_dict.get(src, None)
    if module is None:
        name = '_imported_module_' + uuid.uuid4().hex
        module = types.ModuleType(name)
        sys.modules[name] = module
        _module_to_src_dict[module] = src
        _src_to_module_dict[src] = module
        exec(src, module.__dict__) # pylint: disable=exec-used
    return module

def _check_pickleable(obj):
    """Raise if obj cannot be pickled, without serialising tensors or persistent objects (cheap constructor check)."""
    def strip(x):
        if isinstance(x, (list, tuple, set)):
            return [strip(y) for y in x]
        if isinstance(x, dict):
            return [[strip(k), strip(v)] for k, v in x.items()]
        if isinstance(x, (str, int, float, bool, bytes, bytearray)) or x is None:
            return None
        if f'{type(x).__module__}.{type(x).__name__}' in ('numpy.ndarray', 'torch.Tensor', 'torch.nn.parameter.Parameter'):
            return None
        if is_persistent(x):
            return None
        return x
    with io.BytesIO() as f:
        pickle.dump(strip(obj), f)
