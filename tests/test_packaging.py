"""Packaging: requirements.txt (the one place of pins) and environment.yml agree; no removed stdlib modules."""

import re

def _pins(text):
    return dict(re.findall(r'^\s*-?\s*([A-Za-z0-9_.-]+)==([^\s#]+)', text, flags=re.M))

def test_environment_yml_mirrors_requirements(repo_dir):
    req = _pins((repo_dir / 'requirements.txt').read_text())
    env = _pins((repo_dir / 'environment.yml').read_text())
    assert req and req == env

def test_no_distutils(repo_dir):
    for path in repo_dir.rglob('*.py'):
        if '.git' in path.parts:
            continue
        assert not re.search(r'^\s*(import|from)\s+distutils', path.read_text(), flags=re.M), path
