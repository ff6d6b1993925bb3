"""`python -m ambient.quality`: offline quality of generated images (FD in a classifier trained on held-out real
images). The command line only; the metric is ambient/metrics/quality.py.
"""

import json

import click

import dnnlib
from ambient.metrics.heldout import heldout_split
from ambient.metrics.quality import evaluate
from training.dataset import load_images

#----------------------------------------------------------------------------

@click.command()
@click.option('--images', help='Generated images (folder or zip)', metavar='PATH', type=str, required=True)
@click.option('--data', help='Training subset (zip with source_indices)', metavar='ZIP', type=str, required=True)
@click.option('--full', help='The whole source data set, same conversion', metavar='ZIP', type=str, required=True)
@click.option('--name', help='Source name for the metric, FD_<name>', metavar='STR', type=str, default='digits', show_default=True)
@click.option('--cache', 'cache_dir', help='Where trained classifiers are cached', metavar='DIR', type=str, default=None)
@click.option('--detectors/--no-detectors', help='Also FID / FD_DINOv2 where their weights are available', default=False, show_default=True)
@click.option('--download', 'allow_download', help='Allow downloading detector weights', is_flag=True)
@click.option('--dest', help='Write the metrics here as JSON (else print)', metavar='JSON', type=str, default=None)
def main(images, data, full, name, cache_dir, detectors, allow_download, dest):
    """Offline quality of generated images: FD in a classifier trained on the held-out real images.

    \b
    python -m ambient.quality --images=out --data=train.zip --full=full.zip --dest=quality.json
    """
    real_images, real_labels = heldout_split(data, full)
    result = evaluate(load_images(images)[0], real_images, real_labels, name, cache_dir=cache_dir,
                      detectors=detectors, allow_download=allow_download)
    text = json.dumps(result, indent=2)
    if dest:
        dnnlib.util.atomic_write_bytes(dest, (text + '\n').encode())
    else:
        print(text)


if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
