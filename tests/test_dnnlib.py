"""dnnlib: EasyDict, class lookup by name, open_url with cache, format_time, int lists."""

import http.server
import os
import pathlib
import threading

import pytest

import dnnlib
from dnnlib import util

def test_easydict_attribute_access():
    d = dnnlib.EasyDict(a=1)
    d.b = 2
    assert d == {'a': 1, 'b': 2} and d.a == 1
    del d.a
    assert 'a' not in d
    with pytest.raises(AttributeError):
        _ = d.missing

def test_construct_class_by_name():
    od = util.construct_class_by_name([('x', 1)], class_name='collections.OrderedDict')
    assert type(od).__name__ == 'OrderedDict' and od['x'] == 1
    assert util.get_obj_by_name('os.path.join') is os.path.join
    assert util.get_obj_by_name('dnnlib.util.EasyDict') is dnnlib.EasyDict
    with pytest.raises(ImportError):
        util.get_obj_by_name('no_such_module_xyz.Thing')

def test_format_time():
    assert util.format_time(5) == '5s'
    assert util.format_time(65) == '1m 05s'
    assert util.format_time(3725) == '1h 02m 05s'
    assert util.format_time(90061) == '1d 01h 01m'

def test_parse_int_list():
    assert util.parse_int_list('0-3,7,10-11') == [0, 1, 2, 3, 7, 10, 11]
    for bad in ['a', '3-1', '1,,2']:
        with pytest.raises(dnnlib.UserError):
            util.parse_int_list(bad)

def test_open_url_local_and_file_url(tmp_path):
    p = tmp_path / 'x.bin'
    p.write_bytes(b'hello')
    with util.open_url(str(p)) as f:
        assert f.read() == b'hello'
    with util.open_url(p.as_uri()) as f:
        assert f.read() == b'hello'
    with pytest.raises(dnnlib.UserError, match='No such file'):
        util.open_url(str(tmp_path / 'missing.pkl'))

@pytest.fixture
def http_server(tmp_path):
    (tmp_path / 'served').mkdir()
    (tmp_path / 'served' / 'w.pkl').write_bytes(b'weights')
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path / 'served'), **k)
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    server.RequestHandlerClass.log_message = lambda *a: None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{server.server_address[1]}', tmp_path / 'served'
    server.shutdown()

def test_open_url_http_is_cached(http_server, tmp_path):
    base, served = http_server
    cache = tmp_path / 'cache'
    with util.open_url(f'{base}/w.pkl', cache_dir=str(cache), verbose=False) as f:
        assert f.read() == b'weights'
    (served / 'w.pkl').unlink() # A second open must come from the cache.
    with util.open_url(f'{base}/w.pkl', cache_dir=str(cache), verbose=False) as f:
        assert f.read() == b'weights'
    assert len(os.listdir(cache)) == 1

def test_open_url_unreachable_is_one_clear_error(http_server, tmp_path):
    base, _ = http_server
    with pytest.raises(dnnlib.UserError, match='Cannot download'):
        util.open_url(f'{base}/missing.pkl', cache_dir=str(tmp_path / 'c'), num_attempts=1, verbose=False)

def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path))
    assert util.make_cache_dir_path('downloads') == os.path.join(str(tmp_path), 'downloads')

def test_atomic_write_bytes(tmp_path):
    util.atomic_write_bytes(tmp_path / 'a.json', b'{}')
    assert (tmp_path / 'a.json').read_bytes() == b'{}'
    (tmp_path / 'dir').mkdir()
    with pytest.raises(dnnlib.UserError, match='Cannot write .*dir: Is a directory'):
        util.atomic_write_bytes(tmp_path / 'dir', b'x') # Cannot replace a directory by a file: one line, no traceback.
    assert sorted(os.listdir(tmp_path)) == ['a.json', 'dir'] # No temporary left behind.

def test_atomic_output_threads_writing_one_path(tmp_path):
    # Two threads of one process (sweep --jobs) write the same cache entry at once: both succeed, one wins whole.
    target, barrier, errors = tmp_path / 'entry.bin', threading.Barrier(2), []
    def write(payload):
        try:
            with util.atomic_output(target) as tmp:
                with open(tmp, 'wb') as f:
                    f.write(payload)
                barrier.wait(timeout=10) # Both temporaries exist before either is renamed.
        except Exception as err: # pragma: no cover - reported below
            errors.append(err)
    workers = [threading.Thread(target=write, args=(bytes([i]) * 1000,)) for i in (1, 2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    assert target.read_bytes() in (b'\x01' * 1000, b'\x02' * 1000)
    assert os.listdir(tmp_path) == ['entry.bin']

def test_atomic_output_file_folder_and_failure(tmp_path):
    # A file: the temporary sits beside the target until the block ends, then replaces it.
    target = tmp_path / 'x.bin'
    target.write_bytes(b'old')
    with util.atomic_output(target, suffix='.png') as tmp:
        assert tmp.endswith('.png') and tmp.startswith(str(target) + '.tmp-')
        with open(tmp, 'wb') as f:
            f.write(b'new')
        assert target.read_bytes() == b'old'
    assert target.read_bytes() == b'new'
    # A folder replaces an empty folder.
    folder = tmp_path / 'out'
    folder.mkdir()
    with util.atomic_output(folder) as tmp:
        os.mkdir(tmp)
        (pathlib.Path(tmp) / 'a.txt').write_text('a')
    assert os.listdir(folder) == ['a.txt']
    # Any error (a full disk, Ctrl-C) leaves the target untouched and no temporary file or folder.
    for make in (lambda p: pathlib.Path(p).write_bytes(b'partial'), os.mkdir):
        with pytest.raises(KeyboardInterrupt):
            with util.atomic_output(target) as tmp:
                make(tmp)
                raise KeyboardInterrupt
    assert target.read_bytes() == b'new'
    assert sorted(os.listdir(tmp_path)) == ['out', 'x.bin']
