"""Speed of the exact top-2 cosine search: chunked blocks (ambient.nn_search) vs one full similarity matrix."""

import os
import sys
import time

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) # run as a script from anywhere
from ambient import nn_search # pylint: disable=wrong-import-position


def _naive_top2(queries, keys):
    """The whole [N, M] similarity matrix at once, then top-2 (memory N*M floats)."""
    q = queries / queries.norm(dim=1, keepdim=True)
    k = keys / keys.norm(dim=1, keepdim=True)
    return (q @ k.T).topk(2, dim=1)


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _time(fn, queries, keys):
    """Seconds of one call of fn(queries, keys)."""
    _sync(queries.device)
    t0 = time.perf_counter()
    fn(queries, keys)
    _sync(queries.device)
    return time.perf_counter() - t0


def _rates(fns, queries, keys, repeats):
    """Best-of-repeats samples/second of each fn(queries[:n], keys); calls interleaved so load changes hit all."""
    for fn, n in fns:
        fn(queries[:8], keys) # warm-up: thread pool, allocator, kernels
    best = [float('inf')] * len(fns)
    for _ in range(repeats):
        for j, (fn, n) in enumerate(fns):
            best[j] = min(best[j], _time(fn, queries[:n], keys))
    return [n / t for (_, n), t in zip(fns, best)]


@click.command()
@click.option('--samples', help='Generated samples the estimate is for', type=int, default=50_000, show_default=True)
@click.option('--train', 'train_sizes', help='Training-set sizes', type=str, default='3000,100000', show_default=True)
@click.option('--dim', help='Feature dimension', type=int, default=1024, show_default=True)
@click.option('--measure', help='Samples actually timed for the chunked search (rate scaled to --samples)', type=int, default=1024, show_default=True)
@click.option('--naive-measure', help='Samples timed for the full matrix (it needs N*M floats)', type=int, default=1024, show_default=True)
@click.option('--chunk', help='Chunk size of the blocked search', type=int, default=nn_search.DEFAULT_CHUNK, show_default=True)
@click.option('--repeats', help='Timed repeats (best is kept)', type=int, default=3, show_default=True)
@click.option('--device', help='Where to search', type=str, default='cpu', show_default=True)
@click.option('--quick', help='Small run for a smoke test (dim 256, 512 samples timed, one repeat)', is_flag=True)
def main(samples, train_sizes, dim, measure, naive_measure, chunk, repeats, device, quick):
    """Samples/second of exact top-2 cosine search on random features, chunked vs naive (CPU by default)."""
    if quick:
        dim, measure, naive_measure, repeats = 256, 512, 512, 1
    sizes = [int(x) for x in train_sizes.split(',')]
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    where = f'{torch.cuda.get_device_name(device)}' if device.type == 'cuda' else f'cpu, {torch.get_num_threads()} threads'
    print(f'device {where}, dim {dim}, chunk {chunk}; rates are measured on '
          f'{measure} (chunked) / {naive_measure} (naive) samples and scaled to {samples} samples')
    ratios = []
    for m in sizes:
        keys = torch.randn([m, dim], generator=g).to(device)
        queries = torch.randn([max(measure, naive_measure), dim], generator=g).to(device)
        chunked, naive = _rates([(lambda q, k: nn_search.cosine_topk(q, k, k=2, chunk=chunk, backend='torch'), measure),
                                 (_naive_top2, naive_measure)], queries, keys, repeats)
        # Both give the same neighbours: the comparison is of speed only.
        q = queries[:64]
        assert torch.equal(nn_search.cosine_topk(q, keys, chunk=chunk, backend='torch')[1], _naive_top2(q, keys)[1])
        block_mb = min(chunk * chunk, measure * m) * 4 / 2**20
        naive_mb = samples * m * 4 / 2**20
        print(f'train {m:>7}: chunked {chunked:9.0f} samples/s ({samples / chunked:6.1f} s for {samples}, '
              f'score block {block_mb:.0f} MiB) | naive {naive:9.0f} samples/s ({samples / naive:6.1f} s, '
              f'full matrix for {samples} would be {naive_mb:.0f} MiB)')
        ratios.append((m, chunked / naive))
    print('ratio chunked/naive samples/s: ' + ', '.join(f'train {m}: {r:.2f}x' for m, r in ratios))


if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter
