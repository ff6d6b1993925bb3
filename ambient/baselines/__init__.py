"""The paper's Table 2 baselines: masking (Daras et al. 2023) and noisy-only training. loss.py holds their losses and
the masked preconditioner (persistent, pickled into snapshots); config.py their datasets and train.py hooks.

`ambient.baselines.MaskingEDMLoss`, `.NoisyOnlyEDMLoss` and `.MaskedPrecond` are the dotted names that older runs
recorded (this package was once the module loss.py is now); they resolve to loss.py, imported only when asked for.
"""

_MOVED_NAMES = ('MaskingEDMLoss', 'NoisyOnlyEDMLoss', 'MaskedPrecond')

def __getattr__(name):
    if name in _MOVED_NAMES:
        from ambient.baselines import loss # pylint: disable=import-outside-toplevel
        return getattr(loss, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
