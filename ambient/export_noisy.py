"""`python -m ambient.export_noisy`: export the fixed noisy training set S_tn as .npz plus a PNG preview grid.
The command line only; the export is ambient/method/export_noisy.py.
"""

import click

import dnnlib
from ambient.method.export_noisy import export_noisy

#----------------------------------------------------------------------------

@click.command()
@click.option('--data', help='Dataset folder or zip', metavar='PATH|ZIP', type=str, required=True)
@click.option('--sigma_tn', help='Noise level of the fixed noisy copy', metavar='FLOAT', type=dnnlib.util.FiniteFloat(min=0, min_open=True), required=True)
@click.option('--seed', help='Noise seed (train.py --noise_seed)', metavar='INT', type=click.IntRange(min=0), default=0, show_default=True)
@click.option('--dest', help='Output folder', metavar='DIR', type=str, required=True)
@click.option('--max_images', help='Export only the first N images', metavar='INT', type=click.IntRange(min=1))
def main(data, sigma_tn, seed, dest, max_images):
    """Write the noisy training set S_tn that `train.py --loss=ambient` trains on.

    \b
    python -m ambient.export_noisy --data=datasets/cifar10-32x32.zip --sigma_tn=1.0 --seed=0 --dest=out
    """
    npz, png = export_noisy(data, sigma_tn, seed, dest, max_images=max_images)
    click.echo(f'Wrote {npz} and {png}')


if __name__ == '__main__':
    main()
