"""Small utilities shared by every part of the project (EDM's `dnnlib`, reimplemented)."""

from .util import EasyDict, UserError, make_cache_dir_path

__all__ = ['EasyDict', 'UserError', 'make_cache_dir_path']
