"""`python -m ambient.sweep`: train a model per method and seed, then measure quality and memorization along
training. The command line only; the sweep itself (configuration, presets, stages, reports) is ambient/experiments/.
"""

import click

from ambient.experiments.sweep import PRESETS, make_config, run_sweep
from ambient.metrics import thresholds as ambient_thresholds

#----------------------------------------------------------------------------

@click.command(context_settings=dict(show_default=True))
@click.option('--outdir', help='Where everything goes', metavar='DIR', type=str, required=True)
@click.option('--preset', help='Start from a preset configuration', type=click.Choice(sorted(PRESETS)))
@click.option('--source', help='Build the training subset from this dataset_tool.py source ("digits", a tarball, ...)', metavar='SRC', type=str)
@click.option('--subset', help='Training images drawn from --source', metavar='INT', type=click.IntRange(min=1))
@click.option('--data-seed', 'data_seed', help='Seed of the subset  [default: 0]', metavar='INT', type=int)
@click.option('--balanced', help='Draw the subset class-balanced (dataset_tool.py --balanced)', is_flag=True, default=None)
@click.option('--resolution', help='Resize the source (dataset_tool.py --resolution)', metavar='WxH', type=str)
@click.option('--data', help='An existing training zip instead of --source', metavar='ZIP', type=str)
@click.option('--heldout', help='Labelled held-out real images for the quality metric (with --data)', metavar='ZIP', type=str)
@click.option('--sigma_tn', help='Comma-separated sigma_tn values; 0 = EDM  [default: 0,0.5,1]', metavar='LIST', type=str)
@click.option('--methods', help='Comma-separated models: edm, ambient:SIGMA_TN, masking:MASK_P, noisy_only:SIGMA_TN  [default: from --sigma_tn]', metavar='LIST', type=str)
@click.option('--thresholds-preset', 'thresholds_preset', help='Memorization thresholds: the paper\'s for cifar10 / imagenet / ffhq, all five, or auto (from the data set name)  [default: auto]', type=click.Choice(ambient_thresholds.CHOICES))
@click.option('--every', help='Evaluate every k-th snapshot back from the final one; 0 = final only  [default: 0]', metavar='INT', type=click.IntRange(min=0))
@click.option('--samples', help='Samples per evaluated snapshot  [default: 128]', metavar='INT', type=int)
@click.option('--steps', help='Sampler steps  [default: 18]', metavar='INT', type=click.IntRange(min=1))
@click.option('--seeds', help='Training seeds, one model each per sigma_tn (e.g. 0-2)  [default: 0]', metavar='LIST', type=str)
@click.option('--detector', help='Memorization feature space  [default: pixel]', type=click.Choice(['pixel', 'dinov2', 'inception']))
@click.option('--gpus', help='Launch stages with torchrun on this many GPUs', metavar='INT', type=click.IntRange(min=1))
@click.option('--download', help='Allow downloading FID / FD_DINOv2 detector weights', is_flag=True, default=None)
@click.option('--ambient-opt', 'ambient_opts', help='Extra train.py option for the ambient models only (repeatable), e.g. --ambient_split=uniform', metavar='OPT', multiple=True)
@click.option('--train-opt', 'train_opts', help='Extra train.py option (repeatable); also: anything after --', metavar='OPT', multiple=True)
@click.option('--jobs', help='Models trained and evaluated at once (CPU threads are shared out)  [default: 1]', metavar='INT', type=click.IntRange(min=1))
@click.option('--dry-run', help='Print the commands instead of running them', is_flag=True)
@click.argument('extra_train_opts', nargs=-1, type=click.UNPROCESSED)
def main(outdir, dry_run, train_opts, extra_train_opts, **options):
    """Train a model per sigma_tn, then measure quality and memorization of its snapshots.

    \b
    # The offline demo on scikit-learn's digits (about 8-10 minutes on 2 CPU cores)
    python -m ambient.sweep --preset demo --outdir demo-out
    \b
    # CIFAR-10, 1000 images, four GPUs, paper's hyper-parameters passed to train.py
    python -m ambient.sweep --outdir sweep-c10 --source cifar-10-python.tar.gz --subset 1000 \\
        --sigma_tn 0,0.5,1 --every 5 --samples 10000 --detector dinov2 --gpus 4 -- --batch=256 --lr=1e-4
    """
    cfg = make_config(outdir, train_opts=tuple(train_opts) + tuple(extra_train_opts), **options)
    run_sweep(cfg, dry_run=dry_run)

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
