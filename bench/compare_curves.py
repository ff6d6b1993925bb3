"""Loss curves of training runs side by side (stats.jsonl), and whether a change of precision stays within seed-to-seed noise."""

import json
import os
import sys

import click
import numpy as np


def loss_curve(run_dir):
    """Mean training loss of each tick of a run directory, from its stats.jsonl."""
    path = os.path.join(run_dir, 'stats.jsonl')
    try:
        with open(path, encoding='utf-8') as f:
            return np.array([json.loads(line)['Loss/loss']['mean'] for line in f if line.strip()])
    except (OSError, KeyError, ValueError) as err:
        raise click.ClickException(f'{path}: cannot read the loss curve ({err})') from None


def mean_gap(a, b, skip):
    """Mean absolute difference of two curves over the ticks they share, the first `skip` ticks left out."""
    n = min(len(a), len(b))
    return float(np.mean(np.abs(a[skip:n] - b[skip:n])))


@click.command()
@click.option('--ref', 'ref_dirs', help='Reference runs (e.g. fp32), one per seed', multiple=True, required=True)
@click.option('--test', 'test_dirs', help='Runs under test (e.g. --bf16=1), the same seeds in the same order', multiple=True, required=True)
@click.option('--skip', help='Leading ticks left out (the first loss values are far above the rest)', type=click.IntRange(min=0), default=1, show_default=True)
def main(ref_dirs, test_dirs, skip):
    """Print the curves, the gap between test and reference runs of the same seed, and the gap between reference seeds."""
    if len(ref_dirs) != len(test_dirs) or len(ref_dirs) < 2:
        raise click.UsageError('give the same number (>= 2) of --ref and --test runs, seeds in the same order')
    refs, tests = [loss_curve(d) for d in ref_dirs], [loss_curve(d) for d in test_dirs]
    names = [f'ref{i}' for i in range(len(refs))] + [f'test{i}' for i in range(len(tests))]
    print('tick  ' + '  '.join(f'{n:>7s}' for n in names))
    for tick in range(max(len(c) for c in refs + tests)):
        print(f'{tick:4d}  ' + '  '.join(f'{c[tick]:7.4f}' if tick < len(c) else '      -' for c in refs + tests))
    same_seed = [mean_gap(r, t, skip) for r, t in zip(refs, tests)]
    across = [mean_gap(refs[i], refs[j], skip) for i in range(len(refs)) for j in range(i + 1, len(refs))]
    print(f'mean |test - ref|, same seed:      {np.mean(same_seed):.4f}  ({", ".join(f"{g:.4f}" for g in same_seed)})')
    print(f'mean |ref - ref|, different seeds: {np.mean(across):.4f}  ({", ".join(f"{g:.4f}" for g in across)})')
    verdict = 'within' if np.mean(same_seed) <= np.mean(across) else 'OUTSIDE'
    print(f'the test runs are {verdict} seed-to-seed noise')
    return 0


if __name__ == '__main__':
    sys.exit(main()) # pylint: disable=no-value-for-parameter
