"""Config dicts, class lookup by dotted name, cached URL opening and small helpers."""

import contextlib
import errno
import hashlib
import math
import importlib
import io
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse

import click

#----------------------------------------------------------------------------

class EasyDict(dict):
    """A dict whose keys can also be read and written as attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value

    def __delattr__(self, name):
        del self[name]

class UserError(click.ClickException):
    """A mistake in the user's input: CLIs print one `Error:` line and exit non-zero."""

class FiniteFloat(click.FloatRange):
    """click's FloatRange that also refuses NaN and +-Inf (which pass every comparison or bound silently).

    The one float option type of every CLI: `FiniteFloat(min=0, min_open=True)` etc.; without bounds, any finite float.
    """
    name = 'finite float'

    def __init__(self, *args, allow_inf=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.allow_inf = allow_inf # +Inf allowed where it means "no limit" (generate.py --S_max, EDM's default).

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if math.isnan(number) or (math.isinf(number) and not (self.allow_inf and number > 0)):
            self.fail(f'{value!r} is not a finite number.', param, ctx)
        return super().convert(number, param, ctx)

def check_finite(value, what):
    """UserError unless `value` (a number or array-like) is entirely finite."""
    import numpy as np # pylint: disable=import-outside-toplevel
    if not np.all(np.isfinite(np.asarray(value, dtype=np.float64))):
        raise UserError(f'{what} holds NaN or Inf values')
    return value

def worker_error_message(err):
    """The user's one-line message of a UserError that torch re-raised from a DataLoader worker ("Caught UserError in
    DataLoader worker process 0. Original Traceback ...": the original message is its last line)."""
    text = str(getattr(err, 'message', err))
    if 'DataLoader worker' not in text:
        return text
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    return last.split('UserError: ', 1)[-1].strip()

#----------------------------------------------------------------------------
# Output paths: one line naming the path and the cause instead of an OSError traceback.

WRITE_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG, errno.EIO,
                errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOENT, errno.ENAMETOOLONG)

def write_error(path, err, what='Cannot write'):
    """A UserError naming `path` and the cause of the OSError `err`."""
    cause = err.strerror or str(err) or err.__class__.__name__
    return UserError(f'{what} {os.fspath(path)}: {cause}')

def check_writable(path, is_dir=False, what=None):
    """UserError unless `path` (a file, or a folder when is_dir) can be created or replaced there; creates nothing.

    Checked before long work starts; the existing nearest ancestor must be a writable folder on a writable,
    non-full file system, and `path` itself, when it exists, a folder (is_dir) or a plain file.
    """
    path = os.fspath(path)
    label = f'{what}: ' if what else ''
    if path == '':
        raise UserError(f'{label}empty path')
    if os.path.exists(path):
        if is_dir and not os.path.isdir(path):
            raise UserError(f'{label}{path} exists and is not a directory')
        if not is_dir and os.path.isdir(path):
            raise UserError(f'{label}{path} is a directory; give a file name')
    folder = path if (is_dir and os.path.isdir(path)) else os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise UserError(f'{label}cannot create {path}: {folder} is not a directory')
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError): # Windows has no statvfs.
        st = None
    if st is not None and st.f_flag & getattr(os, 'ST_RDONLY', 1):
        raise UserError(f'{label}cannot write {path}: {folder} is on a read-only file system')
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f'{label}cannot write {path}: {folder} is not writable (permission denied)')
    if st is not None and st.f_bavail * st.f_frsize < 4096:
        raise UserError(f'{label}cannot write {path}: no space left on device ({folder})')

#----------------------------------------------------------------------------

class Logger:
    """Tee stdout/stderr into a log file (EDM's run-directory `log.txt`)."""

    def __init__(self, file_name=None, file_mode='w', should_flush=True):
        self.file = open(file_name, file_mode) if file_name is not None else None
        self.should_flush = should_flush
        self.stdout = sys.stdout
        self.stderr = sys.stderr
        sys.stdout = self
        sys.stderr = self

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    def write(self, text):
        if isinstance(text, bytes):
            text = text.decode()
        if not text:
            return
        if self.file is not None:
            self.file.write(text)
        self.stdout.write(text)
        if self.should_flush:
            self.flush()

    def flush(self):
        if self.file is not None:
            self.file.flush()
        self.stdout.flush()

    def isatty(self):
        return False

    def close(self):
        self.flush()
        # Restore the streams only if they still point at us, so nested loggers unwind cleanly.
        if sys.stdout is self:
            sys.stdout = self.stdout
        if sys.stderr is self:
            sys.stderr = self.stderr
        if self.file is not None:
            self.file.close()
            self.file = None

#----------------------------------------------------------------------------

def format_time(seconds):
    """Format a duration as EDM's logs do: '12s', '3m 05s', '2h 03m 04s', '1d 02h 03m'."""
    s = int(round(seconds))
    if s < 60:
        return f'{s}s'
    if s < 60 * 60:
        return f'{s // 60}m {s % 60:02d}s'
    if s < 24 * 60 * 60:
        return f'{s // 3600}h {(s // 60) % 60:02d}m {s % 60:02d}s'
    return f'{s // 86400}d {(s // 3600) % 24:02d}h {(s // 60) % 60:02d}m'

def parse_int_list(s):
    """Parse '0-3,7,10-11' (or a list) into [0, 1, 2, 3, 7, 10, 11]; raise UserError when malformed."""
    if isinstance(s, list):
        return s
    result = []
    for part in str(s).split(','):
        part = part.strip()
        m = re.fullmatch(r'(\d+)\s*-\s*(\d+)', part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise UserError(f'Invalid range "{part}": end before start')
            result.extend(range(lo, hi + 1))
        elif re.fullmatch(r'\d+', part):
            result.append(int(part))
        else:
            raise UserError(f'Invalid integer list "{s}": expected e.g. 0-63 or 1,2,5-10')
    return result

#----------------------------------------------------------------------------

def get_module_from_obj_name(obj_name):
    """Split 'pkg.mod.Obj.attr' into (imported module, 'Obj.attr') by trying the longest importable prefix."""
    parts = obj_name.split('.')
    for i in range(len(parts) - 1, 0, -1):
        module_name = '.'.join(parts[:i])
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            # Only swallow "this prefix is not a module"; a missing import inside a real module is a bug to surface.
            if e.name is None or module_name == e.name or module_name.startswith(e.name + '.'):
                continue
            raise
        try:
            get_obj_from_module(module, '.'.join(parts[i:]))
            return module, '.'.join(parts[i:])
        except AttributeError:
            continue
    raise ImportError(f'Cannot find "{obj_name}"')

def get_obj_from_module(module, obj_name):
    """Resolve a dotted attribute path inside a module."""
    obj = module
    for part in obj_name.split('.'):
        obj = getattr(obj, part)
    return obj

def get_obj_by_name(name):
    """Return the object (class, function, ...) named by a fully qualified dotted name."""
    module, obj_name = get_module_from_obj_name(name)
    return get_obj_from_module(module, obj_name)

def call_func_by_name(*args, func_name=None, **kwargs):
    """Call the function named by a dotted name with the given arguments."""
    assert func_name is not None
    func = get_obj_by_name(func_name)
    if not callable(func):
        raise TypeError(f'"{func_name}" is not callable')
    return func(*args, **kwargs)

def construct_class_by_name(*args, class_name=None, **kwargs):
    """Construct an instance of the class named by a dotted name (EDM's config indirection)."""
    return call_func_by_name(*args, func_name=class_name, **kwargs)

#----------------------------------------------------------------------------

def make_cache_dir_path(*paths):
    """Path inside the download cache: $DNNLIB_CACHE_DIR, else ~/.cache/dnnlib (or a temp dir without a home)."""
    if 'DNNLIB_CACHE_DIR' in os.environ:
        return os.path.join(os.environ['DNNLIB_CACHE_DIR'], *paths)
    home = os.environ.get('HOME') or os.environ.get('USERPROFILE')
    if home:
        return os.path.join(home, '.cache', 'dnnlib', *paths)
    return os.path.join(tempfile.gettempdir(), '.cache', 'dnnlib', *paths)

def is_url(obj, allow_file_urls=False):
    """True for http(s):// URLs (and file:// ones when allowed)."""
    if not isinstance(obj, str) or '://' not in obj:
        return False
    scheme = urllib.parse.urlparse(obj).scheme
    return scheme in ('http', 'https') or (allow_file_urls and scheme == 'file')

def _file_url_to_path(url):
    parsed = urllib.parse.urlparse(url)
    path = urllib.parse.unquote(parsed.path)
    if os.name == 'nt' and re.match(r'^/[A-Za-z]:', path):
        path = path[1:]
    return path

def _download(url, num_attempts, verbose):
    import requests # Imported lazily: only downloads need it.
    last_error = None
    for attempt in range(num_attempts):
        try:
            with requests.Session() as session:
                if verbose:
                    print(f'Downloading {url} ...', end='', flush=True)
                with session.get(url, timeout=60) as res:
                    res.raise_for_status()
                    if len(res.content) == 0:
                        raise IOError('empty response')
                    if verbose:
                        print(' done')
                    return res.content
        except KeyboardInterrupt:
            raise
        except Exception as e: # pylint: disable=broad-except
            last_error = e
            if verbose:
                print(' failed')
            if attempt + 1 < num_attempts:
                time.sleep(min(2 ** attempt, 10))
    raise UserError(f'Cannot download {url}: {last_error.__class__.__name__}: {last_error}')

def cached_url_path(url, cache_dir=None):
    """The file in the download cache that holds `url`, or None when it has not been downloaded."""
    cache_dir = make_cache_dir_path('downloads') if cache_dir is None else cache_dir
    url_md5 = hashlib.md5(url.encode('utf-8')).hexdigest()
    hits = [f for f in (os.listdir(cache_dir) if os.path.isdir(cache_dir) else []) if f.startswith(url_md5 + '_')]
    return os.path.join(cache_dir, hits[0]) if len(hits) == 1 else None

def open_url(url, cache_dir=None, num_attempts=3, verbose=True, return_filename=False, cache=True):
    """Open a local path, file:// URL or http(s) URL as a binary file object; downloads are cached on disk."""
    if not isinstance(url, str) or len(url) == 0:
        raise UserError(f'Invalid path or URL: {url!r}')
    if not is_url(url, allow_file_urls=True):
        if not os.path.isfile(url):
            raise UserError(f'No such file: {url}')
        return url if return_filename else open(url, 'rb')
    if url.startswith('file://'):
        path = _file_url_to_path(url)
        if not os.path.isfile(path):
            raise UserError(f'No such file: {path} (from {url})')
        return path if return_filename else open(path, 'rb')
    assert num_attempts >= 1
    assert not (return_filename and not cache)

    if cache_dir is None:
        cache_dir = make_cache_dir_path('downloads')
    url_md5 = hashlib.md5(url.encode('utf-8')).hexdigest()
    path = cached_url_path(url, cache_dir) if cache else None
    if path is not None:
        return path if return_filename else open(path, 'rb')

    data = _download(url, num_attempts=num_attempts, verbose=verbose)
    if cache:
        name = re.sub(r'[^0-9a-zA-Z-._]', '_', os.path.basename(urllib.parse.urlparse(url).path)) or 'file'
        name = name[:min(len(name), 128)]
        path = os.path.join(cache_dir, f'{url_md5}_{name}')
        os.makedirs(cache_dir, exist_ok=True)
        with atomic_output(path, unique=True) as tmp: # Concurrent ranks never see a truncated cache entry.
            with open(tmp, 'wb') as f:
                f.write(data)
        if return_filename:
            return path
    return io.BytesIO(data)

#----------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_output(path, unique=False, suffix=''):
    """Yield a temporary path beside `path`; on success sync it and rename it into place, on any error remove it.

    The caller writes a file (or builds a folder) at the yielded path. Readers never see a partial output, and
    a failure (disk full, exception, Ctrl-C) leaves neither the temporary nor a changed `path` behind.
    `unique` adds a nanosecond stamp for writers that may race in one process tree (several ranks); `suffix`
    ends the temporary name, for writers that pick the format by extension.
    """
    path = os.fspath(path)
    tmp = f'{path}.tmp-{os.getpid()}'
    if threading.current_thread() is not threading.main_thread():
        tmp += f'-t{threading.get_ident()}' # Worker threads of one process (sweep --jobs) may write the same cache entry.
    tmp += (f'-{time.time_ns()}' if unique else '') + suffix
    try:
        try:
            yield tmp
            if os.path.isfile(tmp):
                with open(tmp, 'rb') as f:
                    os.fsync(f.fileno())
            elif os.path.isdir(path) and os.path.isdir(tmp) and not os.listdir(path):
                os.rmdir(path) # rename() replaces an empty folder on POSIX only; remove it first everywhere.
            os.replace(tmp, path)
        except OSError as err: # Disk full, read-only, permissions: one line naming the output, not a traceback.
            ours = err.filename is None or os.fspath(err.filename) in (tmp, path) or os.fspath(err.filename).startswith(tmp)
            if err.errno not in WRITE_ERRNOS or not ours: # An input the body read is the caller's business.
                raise
            raise write_error(path, err) from None
        except Exception as err: # Writers that wrap the OSError (torch.save, safetensors) on a full disk.
            if isinstance(err, UserError) or not _no_space_left(tmp):
                raise
            raise UserError(f'Cannot write {path}: No space left on device ({err.__class__.__name__})') from None
    finally:
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp): # Only after a failure: a successful replace consumed it.
            os.remove(tmp)


def _no_space_left(path):
    """Whether the file system holding `path` (or its folder) is full."""
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except (OSError, AttributeError):
        return False
    return st.f_bavail * st.f_frsize < 4096


def atomic_write_bytes(path, data):
    """Write bytes to path through a temporary file and rename, so readers never see a partial file."""
    with atomic_output(path) as tmp:
        with open(tmp, 'wb') as f:
            f.write(data)
