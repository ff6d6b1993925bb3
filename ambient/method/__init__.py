"""The method: the ambient losses (persistent), the fixed-noise dataset and its wrappers, the train.py hook
(`--loss=ambient`), the noise-preserving augmentation policy, the noisy-copy export and the oracle denoisers.
Imports nothing from the other rooms."""
