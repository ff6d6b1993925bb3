"""Speed of the exact top-2 cosine search: the float32 candidate pass (ambient.nn_search, fast=False), the certified
bfloat16 pass (fast=True, the same bytes), and one full similarity matrix."""

import os
import sys
import time

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) # run as a script from anywhere
from ambient.metrics import nn_search # pylint: disable=wrong-import-position
from torch_utils import cpu_features # pylint: disable=wrong-import-position


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
@click.option('--train', 'train_sizes', help='Training-set sizes', type=str, default='100000', show_default=True)
@click.option('--dim', help='Feature dimension (1536: DINOv2 ViT-g/14)', type=int, default=1536, show_default=True)
@click.option('--measure', help='Samples actually timed for the chunked search (rate scaled to --samples)', type=int, default=2048, show_default=True)
@click.option('--naive-measure', help='Samples timed for the full matrix (it needs N*M floats)', type=int, default=1024, show_default=True)
@click.option('--chunk', help='Chunk size of the blocked search', type=int, default=nn_search.DEFAULT_CHUNK, show_default=True)
@click.option('--repeats', help='Timed repeats (best is kept)', type=int, default=3, show_default=True)
@click.option('--device', help='Where to search', type=str, default='cpu', show_default=True)
@click.option('--whole', help='Also time one certified bf16 search of all --samples against each training set', is_flag=True)
@click.option('--quick', help='Small run for a smoke test (train 3000,20000, dim 256, 512 samples timed, one repeat)', is_flag=True)
def main(samples, train_sizes, dim, measure, naive_measure, chunk, repeats, device, whole, quick): # pylint: disable=too-many-locals
    """Samples/second of exact top-2 cosine search on random features: exact float32, bf16+rescoring, naive."""
    if quick:
        train_sizes, dim, measure, naive_measure, repeats = '3000,20000', 256, 512, 512, 1
    sizes = [int(x) for x in train_sizes.split(',')]
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    print(cpu_features.describe())
    where = f'{torch.cuda.get_device_name(device)}' if device.type == 'cuda' else f'cpu, {torch.get_num_threads()} threads'
    print(f'device {where}, dim {dim}, chunk {chunk}; rates are measured on '
          f'{measure} (chunked) / {naive_measure} (naive) samples and scaled to {samples} samples')
    ratios = []
    for m in sizes:
        keys = torch.randn([m, dim], generator=g).to(device)
        queries = torch.randn([max(measure, naive_measure), dim], generator=g).to(device)
        exact, fast, naive = _rates([(lambda q, k: nn_search.cosine_topk(q, k, k=2, chunk=chunk, backend='torch', fast=False), measure),
                                     (lambda q, k: nn_search.cosine_topk(q, k, k=2, chunk=chunk, backend='torch', fast=True), measure),
                                     (_naive_top2, naive_measure)], queries, keys, repeats)
        # The fast path returns exactly the exact path's result; the naive one the same neighbours.
        q = queries[:measure]
        ev, ei = nn_search.cosine_topk(q, keys, chunk=chunk, backend='torch', fast=False)
        fv, fi = nn_search.cosine_topk(q, keys, chunk=chunk, backend='torch', fast=True)
        assert torch.equal(ei, fi) and torch.equal(ev, fv), 'fast path differs from the exact path (indices or float32 bytes)'
        assert torch.equal(ei[:64], _naive_top2(q[:64], keys)[1])
        fallback = len(nn_search.cosine_search(q, keys, k=2, chunk=chunk, backend='torch', fast=True)[2])
        print(f'train {m:>7}: exact fp32 {exact:8.0f} samples/s ({samples / exact:6.1f} s for {samples}) | '
              f'bf16+rescore {fast:8.0f} samples/s ({samples / fast:6.1f} s; fallback {fallback}/{len(q)}) | '
              f'naive {naive:8.0f} samples/s ({samples / naive:6.1f} s) | fast/exact {fast / exact:.2f}x')
        ratios.append((m, fast / exact))
    print('ratio fast/exact samples/s: ' + ', '.join(f'train {m}: {r:.2f}x' for m, r in ratios))
    if whole:
        for m in sizes:
            keys = torch.randn([m, dim], generator=g).to(device)
            queries = torch.randn([samples, dim], generator=g).to(device)
            _sync(device)
            t0 = time.perf_counter()
            _, _, fallback = nn_search.cosine_search(queries, keys, k=2, chunk=chunk, backend='torch', fast=True)
            _sync(device)
            print(f'whole search {samples} x {m} x {dim}, bf16 candidates + exact scores: '
                  f'{time.perf_counter() - t0:.1f} s (fallback {len(fallback)}/{samples})')


if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter
