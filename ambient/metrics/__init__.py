"""Measurements: memorization (nearest training images, its report files, the exact neighbour search), offline
quality, the paper's similarity thresholds, held-out splits and intervals. Imports nothing from experiments/."""
