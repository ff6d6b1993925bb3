"""Ambient Diffusion on top of EDM: loss, fixed-noise dataset, train.py hook, oracle denoisers and memorization tools."""
