"""The layout rules of docs/architecture.md, read from the code's imports with `ast` (lazy imports inside functions
included): doors on top of ambient/ (the command lines), rooms below (the library), and which way imports go."""

import ast
import pathlib

import pytest

import ambient

REPO = pathlib.Path(__file__).resolve().parent.parent
DOORS = {'sweep', 'memorization', 'quality', 'figures', 'report', 'export_noisy', 'finetune_t2i', 'evaluate_t2i', 'advise'}
ROOMS = {'method', 'baselines', 'metrics', 'experiments', 't2i'}
TOP_LEVEL_CLIS = {'train', 'generate', 'fid', 'dataset_tool'}
# room -> rooms it must not import (besides the doors and the top-level CLIs, which no room imports)
FORBIDDEN_ROOMS = {
    'method': {'baselines', 'metrics', 'experiments', 't2i'},
    'baselines': {'metrics', 'experiments', 't2i'},
    'metrics': {'experiments', 't2i'},
}


def _imports(path):
    """Every module name an `import` / `from ... import` of this file names, with `from X import Y` also as X.Y."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module
            if node.level: # Relative: resolved against the file's package.
                package = path.relative_to(REPO).parent.parts
                module = '.'.join(package[:len(package) - node.level + 1] + ((node.module,) if node.module else ()))
            names += [module] + [f'{module}.{a.name}' for a in node.names]
    return names


def _files(*parts):
    return sorted((REPO.joinpath(*parts)).rglob('*.py'))


def _room_files():
    return [(room, path) for room in sorted(ROOMS) for path in _files('ambient', room)]


def test_top_level_of_ambient_holds_only_doors():
    top = {p.stem for p in (REPO / 'ambient').glob('*.py')} - {'__init__'}
    assert top == DOORS
    assert {p.name for p in (REPO / 'ambient').iterdir() if p.is_dir() and p.name != '__pycache__'} == ROOMS
    for door in DOORS:
        src = (REPO / 'ambient' / f'{door}.py').read_text(encoding='utf-8')
        assert 'import click' in src and "if __name__ == '__main__':" in src, door
    for old in ambient.MOVED: # Old flat names are aliases only, never files.
        assert not (REPO / (old.replace('.', '/') + '.py')).exists(), old


@pytest.mark.parametrize('top', ['training', 'torch_utils', 'dnnlib'])
def test_training_never_imports_ambient(top):
    for path in _files(top):
        bad = [n for n in _imports(path) if n == 'ambient' or n.startswith('ambient.')]
        assert not bad, f'{path.relative_to(REPO)} imports {bad}'


def test_rooms_never_import_doors_or_command_lines():
    for room, path in _room_files():
        for name in _imports(path):
            parts = name.split('.')
            assert parts[0] not in TOP_LEVEL_CLIS, f'{path.relative_to(REPO)} imports {name}'
            if parts[0] == 'ambient' and len(parts) > 1:
                assert parts[1] not in DOORS, f'{path.relative_to(REPO)} ({room}) imports the door ambient.{parts[1]}'


def test_rooms_import_in_one_direction():
    for room, path in _room_files():
        for name in _imports(path):
            parts = name.split('.')
            if parts[0] == 'ambient' and len(parts) > 1:
                assert parts[1] not in FORBIDDEN_ROOMS.get(room, ()), f'{path.relative_to(REPO)} ({room}) imports {name}'


def test_ambient_code_imports_rooms_by_their_own_names():
    """The old flat names (ambient.loss, ...) are for recorded dotted names and old pickles, not for our imports."""
    for path in _files('ambient') + _files('bench'):
        for name in _imports(path):
            assert not any(name == old or name.startswith(old + '.') for old in ambient.MOVED), \
                f'{path.relative_to(REPO)} imports {name}; use {ambient.MOVED[".".join(name.split(".")[:2])]}'


def test_library_never_imports_command_lines():
    for path in _files('ambient') + _files('training') + _files('torch_utils') + _files('dnnlib'):
        bad = [n for n in _imports(path) if n.split('.')[0] in TOP_LEVEL_CLIS]
        assert not bad, f'{path.relative_to(REPO)} imports {bad}'


def test_alias_is_the_room_module():
    import importlib # pylint: disable=import-outside-toplevel
    for old, new in ambient.MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new)
        assert importlib.import_module(new).__spec__.name == new
