"""`python -m ambient.report RUN_DIR [RUN_DIR ...] --dest=DIR`: one self-contained HTML page for a set of training
runs or sweeps. The command line only; the page is built by ambient/experiments/report.py.
"""

import click

from ambient.experiments.report import write_report

#----------------------------------------------------------------------------

@click.command()
@click.argument('run_dirs', nargs=-1, required=True, metavar='RUN_DIR [RUN_DIR ...]')
@click.option('--dest', help='Output folder (index.html and PNGs)', metavar='DIR', type=str, required=True)
@click.option('--title', help='Page title', metavar='STR', type=str, default='Training runs', show_default=True)
def main(run_dirs, dest, title):
    """One self-contained HTML page for a set of training runs: loss curves (also per ambient regime), training
    options, and, for runs of an ambient.sweep, sample grids and memorization / quality of each snapshot.

    RUN_DIR is a train.py run directory or an ambient.sweep output folder (all its runs).

    \b
    python -m ambient.report training-runs/00000-* training-runs/00001-* --dest=report
    python -m ambient.report demo-out --dest=demo-out/html
    """
    index = write_report(run_dirs, dest, title)
    print(f'Wrote {index}')

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
