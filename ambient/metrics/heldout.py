"""Held-out real images: the images of a source data set that are not in a training subset (for quality metrics)."""

import os

import numpy as np

import dnnlib
from training.dataset import load_images, read_dataset_json

#----------------------------------------------------------------------------

def load_labelled(path):
    """uint8 NCHW images of a folder or zip with their int64 class labels (None when it has no labels)."""
    images, info = load_images(os.fspath(path), use_labels=True)
    if info.labels is not None and info.labels.dtype != np.int64:
        raise dnnlib.util.UserError(f'{path}: the quality classifier needs class labels, found label vectors')
    return images, info.labels


def source_indices(path, count):
    """Source index of every image of a data set, from its dataset.json (default: position in the folder)."""
    indices = read_dataset_json(path).get('source_indices')
    if indices is None:
        return np.arange(count, dtype=np.int64)
    indices = np.asarray(indices, dtype=np.int64)
    if indices.shape != (count,):
        raise dnnlib.util.UserError(f'{path}: dataset.json lists {indices.size} source_indices for {count} images')
    return indices


def heldout_split(train_path, full_path):
    """Images and labels of the full data set whose source index is not in the training subset.

    Both sets must come from the same source and conversion (dataset_tool.py with the same resolution):
    the training images are checked to be pixel-identical to the full set's images of the same index.
    """
    full_images, full_labels = load_labelled(full_path)
    if full_labels is None:
        raise dnnlib.util.UserError(f'{full_path} has no class labels in dataset.json; the quality classifier needs them')
    train_images = load_images(train_path)[0]
    full_idx = source_indices(full_path, len(full_images))
    train_idx = source_indices(train_path, len(train_images))
    if 'source_indices' not in read_dataset_json(train_path):
        raise dnnlib.util.UserError(f'{train_path}: dataset.json has no "source_indices"; make it with dataset_tool.py --subset')
    position = {int(s): i for i, s in enumerate(full_idx)}
    missing = [int(s) for s in train_idx if int(s) not in position]
    if missing:
        raise dnnlib.util.UserError(f'{train_path} uses source image {missing[0]}, which {full_path} does not hold')
    same = full_images[[position[int(s)] for s in train_idx]]
    if same.shape != train_images.shape or not np.array_equal(same, train_images):
        raise dnnlib.util.UserError(f'{train_path} and {full_path} differ on the same source images; '
                                    'convert both with the same dataset_tool.py options')
    keep = ~np.isin(full_idx, train_idx)
    return full_images[keep], full_labels[keep]

#----------------------------------------------------------------------------
