"""Ambient Diffusion on top of EDM, laid out as doors on top and rooms below (docs/architecture.md).

Doors, the command lines (`python -m ambient.<command>`): sweep, memorization, quality, figures, report,
export_noisy, finetune_t2i, evaluate_t2i, advise. Rooms, the library: method/ (the loss, fixed-noise dataset, train.py
hook), baselines/ (Table 2's masking and noisy-only baselines), metrics/ (memorization, quality, intervals),
experiments/ (the sweep, its reports and figures), t2i/ (text-to-image).

Snapshots and training options name classes and functions by dotted name; those written before the rooms existed
use the flat names, e.g. `ambient.loss.AmbientEDMLoss` (new runs record `ambient.method.loss.AmbientEDMLoss`; the
resume check compares class names by the object they resolve to, so old runs resume). MOVED maps each flat module name to its room; the finder below makes
`import ambient.loss` (and so `construct_class_by_name('ambient.loss.AmbientEDMLoss')` and unpickling) return
the room's module itself, imported only when first asked for. No flat module exists on disk.
"""

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    'ambient.loss': 'ambient.method.loss',
    'ambient.dataset': 'ambient.method.dataset',
    'ambient.config': 'ambient.method.config',
    'ambient.augment_policy': 'ambient.method.augment_policy',
    'ambient.oracle': 'ambient.method.oracle',
    'ambient.baselines_config': 'ambient.baselines.config', # ambient.baselines.MaskingEDMLoss etc.: baselines/__init__.py
    'ambient.nn_search': 'ambient.metrics.nn_search',
    'ambient.memorization_report': 'ambient.metrics.memorization_report',
    'ambient.thresholds': 'ambient.metrics.thresholds',
    'ambient.heldout': 'ambient.metrics.heldout',
    'ambient.stats': 'ambient.metrics.stats',
    'ambient.pareto': 'ambient.experiments.pareto',
    'ambient.sweep_methods': 'ambient.experiments.sweep_methods',
    'ambient.sweep_stages': 'ambient.experiments.sweep_stages',
    'ambient.sweep_summary': 'ambient.experiments.sweep_summary',
    'ambient.sweep_report': 'ambient.experiments.sweep_report',
}

class _AliasLoader(importlib.abc.Loader):
    """Loads an old name as the already importable module of its room (the same object, not a copy)."""

    def __init__(self, target):
        self.target = target
        self.spec = None

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self.spec = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self.spec # The import system set the alias's spec; the module keeps its own.

class _AliasFinder(importlib.abc.MetaPathFinder):
    """Finds the names of MOVED (and nothing else)."""

    def find_spec(self, fullname, path=None, target=None): # pylint: disable=unused-argument
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(MOVED[fullname]))

if not any(type(f).__name__ == '_AliasFinder' for f in sys.meta_path):
    sys.meta_path.insert(0, _AliasFinder())
