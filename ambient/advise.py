"""`python -m ambient.advise`: recommend sigma_tn from the training set's nearest-neighbour distances (command line only)."""

import os

import click

import dnnlib
from ambient.experiments import advice as advice_lib
from ambient.experiments import pilot as pilot_lib
from ambient.metrics import nn_search
from ambient.metrics.memorization import DINOV2_ARCHS

#----------------------------------------------------------------------------

@click.command()
@click.option('--data', help='Training set', metavar='ZIP|DIR', type=str, required=True)
@click.option('--detector', help='Also measure distances in DINOv2 features (the recommendation stays pixel noise)', type=click.Choice(['pixel', 'dinov2']), default='pixel', show_default=True)
@click.option('--detector-path', 'detector_path', help='Local DINOv2 weights instead of the download', metavar='PATH', type=str)
@click.option('--arch', help='DINOv2 backbone  [default: vitg14]', type=click.Choice(DINOV2_ARCHS))
@click.option('--dest', help='Output folder  [default: <data-stem>-advice beside the data]', metavar='DIR', type=str)
@click.option('--per-image', 'per_image', help='Also write sigma_tn_per_image.json ({file name: sigma_tn})', is_flag=True)
@click.option('--pilot', help='Then train and evaluate sigma_tn = 0, lo, recommended, hi (one seed) and report the Pareto front', is_flag=True)
@click.option('--pilot-outdir', 'pilot_outdir', help='Folder of the pilot sweep  [default: <dest>/pilot]', metavar='DIR', type=str)
@click.option('--heldout', help='Labelled held-out real images for the pilot\'s quality metric', metavar='ZIP|DIR', type=str)
@click.option('--samples', help='Samples per pilot model  [default: 128]', metavar='INT', type=click.IntRange(min=2))
@click.option('--train-opt', 'train_opts', help='train.py option of the pilot models (repeatable), e.g. --train-opt=--iters=2000', metavar='OPT', multiple=True)
@click.option('--download', help='Allow downloading detector weights (DINOv2; FID detectors of the pilot)', is_flag=True)
@click.option('--chunk', help='Rows per block of the neighbour search', metavar='INT', type=click.IntRange(min=1), default=nn_search.DEFAULT_CHUNK, show_default=True)
def main(data, detector, detector_path, arch, dest, per_image, pilot, pilot_outdir, heldout, samples, train_opts, download, chunk):
    """Measure how far apart the training images are and recommend sigma_tn; writes advice.json, advice.md and
    histogram.png (and sigma_tn_per_image.json with --per-image).

    \b
    python -m ambient.advise --data=datasets/cifar10-300.zip
    \b
    # Also check the recommendation with a short sweep (EDM, lo, recommended, hi)
    python -m ambient.advise --data=datasets/digits-100.zip --heldout=datasets/digits-heldout.zip \\
        --pilot --train-opt=--iters=1800 --train-opt=--batch=64
    """
    if not pilot and (pilot_outdir or heldout or samples or train_opts):
        raise dnnlib.util.UserError('--pilot-outdir, --heldout, --samples and --train-opt apply only to --pilot')
    if not os.path.exists(data):
        raise dnnlib.util.UserError(f'--data: dataset not found: {data}')
    if heldout is not None and not os.path.exists(heldout):
        raise dnnlib.util.UserError(f'--heldout: dataset not found: {heldout}')
    dest = dest or advice_lib.default_dest(data)
    dnnlib.util.check_writable(dest, is_dir=True, what='--dest')
    pilot_outdir = pilot_outdir or os.path.join(dest, 'pilot')
    if pilot:
        dnnlib.util.check_writable(pilot_outdir, is_dir=True, what='--pilot-outdir')

    advice, extras = advice_lib.advise(data, detector=detector, detector_path=detector_path, arch=arch,
                                       download=download, per_image=per_image, chunk=chunk)
    written = advice_lib.write_outputs(dest, advice, extras)
    for line in advice_lib.summary_lines(advice):
        click.echo(line)
    click.echo(f'Wrote {", ".join(written)} in {dest}')
    if pilot:
        advice['pilot'] = pilot_lib.run_pilot(data, advice['recommendation'], pilot_outdir, train_opts=train_opts,
                                              heldout=heldout, samples=samples, download=download)
        advice_lib.write_outputs(dest, advice, extras)
        for line in advice_lib.pilot_lines(advice['pilot']):
            click.echo(line)


if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
