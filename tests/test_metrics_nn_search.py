"""Tests for ambient.metrics.nn_search: the chunked exact search agrees with brute force."""

import pytest
import numpy as np
import torch

from ambient.metrics import nn_search


def _random(n, m, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn([n, d], generator=g), torch.randn([m, d], generator=g)


def _brute_cosine(q, keys, k):
    q = q / q.norm(dim=1, keepdim=True)
    keys = keys / keys.norm(dim=1, keepdim=True)
    return (q @ keys.T).topk(k, dim=1)


def _brute_l2(q, keys, k):
    d = torch.cdist(q.double(), keys.double())
    v, i = d.topk(k, dim=1, largest=False)
    return v.float(), i


@pytest.mark.parametrize('chunk', [1, 7, 10_000])
def test_cosine_topk_matches_brute_force(chunk):
    q, keys = _random(23, 41, 16)
    v, i = nn_search.cosine_topk(q, keys, k=2, chunk=chunk, backend='torch')
    bv, bi = _brute_cosine(q, keys, 2)
    assert torch.equal(i, bi)
    torch.testing.assert_close(v, bv, atol=1e-6, rtol=0)
    assert (v[:, 0] >= v[:, 1]).all()


@pytest.mark.parametrize('chunk', [1, 7, 10_000])
def test_l2_topk_matches_brute_force(chunk):
    q, keys = _random(23, 41, 16, seed=1)
    v, i = nn_search.l2_topk(q, keys, k=2, chunk=chunk, backend='torch')
    bv, bi = _brute_l2(q, keys, 2)
    assert torch.equal(i, bi)
    torch.testing.assert_close(v, bv, atol=1e-5, rtol=1e-5)


def test_l2_exact_copy_has_zero_distance():
    # Large-magnitude pixel-like vectors: the expanded |q|^2 - 2qk + |k|^2 form alone would not give 0.
    g = torch.Generator().manual_seed(2)
    keys = torch.randint(0, 256, [50, 3072], generator=g).to(torch.uint8)
    q = keys[[3, 17, 42]].float()
    d, i = nn_search.l2_topk(q, keys, k=2, chunk=16)
    assert i[:, 0].tolist() == [3, 17, 42]
    assert (d[:, 0] == 0).all() and (d[:, 1] > 1000).all()


def test_cosine_self_similarity_is_one():
    _, keys = _random(5, 30, 64, seed=3)
    v, i = nn_search.cosine_topk(keys[[4, 9]], keys, k=2, chunk=7)
    assert i[:, 0].tolist() == [4, 9]
    torch.testing.assert_close(v[:, 0], torch.ones(2), atol=1e-6, rtol=0)
    assert (v <= 1).all()


def test_k_larger_than_keys_and_bad_shapes():
    q, keys = _random(4, 1, 8, seed=4)
    v, i = nn_search.cosine_topk(q, keys, k=2)
    assert v.shape == (4, 1) and (i == 0).all()
    with pytest.raises(ValueError):
        nn_search.cosine_topk(q, torch.zeros([3, 9]))
    with pytest.raises(ValueError):
        nn_search.l2_topk(q, torch.zeros([0, 8]))
    with pytest.raises(ValueError):
        nn_search.cosine_topk(q, keys, backend='nope')


def test_faiss_backend_matches_torch():
    pytest.importorskip('faiss')
    q, keys = _random(20, 300, 32, seed=5)
    for fn in (nn_search.cosine_topk, nn_search.l2_topk):
        tv, ti = fn(q, keys, k=2, backend='torch')
        fv, fi = fn(q, keys, k=2, backend='faiss')
        assert torch.equal(ti, fi)
        torch.testing.assert_close(tv, fv, atol=1e-4, rtol=1e-4)


def _near_duplicates(num, seed=6):
    """A uint8 pixel vector and `num` copies of it, each with a few pixels nudged by -3..3 (some unchanged)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 256, [3072], generator=g)
    keys = base.repeat(num, 1)
    for j in range(num):
        idx = torch.randint(0, 3072, [j % 7 + 1], generator=g)
        keys[j, idx] = (keys[j, idx] + torch.randint(-3, 4, idx.shape, generator=g)).clamp(0, 255)
    return base, keys.to(torch.uint8)


@pytest.mark.parametrize('chunk', [3, 64, 4096])
def test_l2_float64_is_exact_among_near_duplicates(chunk):
    # Hundreds of keys within a few grey levels of the query: float32 rounding of the expanded form
    # is larger than their gaps, float64 of integer pixels is exact. Ties go to the lower index.
    base, keys = _near_duplicates(200)
    exact = (keys.double() - base.double()).norm(dim=1)
    order = sorted(range(len(exact)), key=lambda j: (exact[j].item(), j))[:2]
    d, i = nn_search.l2_topk(base[None].double(), keys, k=2, chunk=chunk, backend='torch')
    assert i[0].tolist() == order
    assert d[0].tolist() == [exact[j].item() for j in order]


def test_l2_ties_resolved_by_index_whatever_the_chunk():
    g = torch.Generator().manual_seed(7)
    keys = torch.randint(0, 256, [30, 48], generator=g).to(torch.uint8)
    keys[[5, 11, 23, 29]] = keys[2].clone() # five identical keys: 2, 5, 11, 23, 29
    for chunk in (1, 4, 7, 100):
        d, i = nn_search.l2_topk(keys[[2]].double(), keys, k=2, chunk=chunk, backend='torch')
        assert i[0].tolist() == [2, 5] and d[0].tolist() == [0.0, 0.0]


def _exact_cosine(q, keys, k):
    v, i = nn_search.cosine_topk(q, keys, k=k, chunk=64, fast=False)
    return v, i


@pytest.mark.parametrize('k', [1, 2, 3])
def test_bf16_cosine_matches_exact_path_random(k):
    q, keys = _random(300, 2000, 96, seed=8)
    ev, ei = _exact_cosine(q, keys, k)
    fv, fi = nn_search.cosine_topk(q, keys, k=k, chunk=64, fast=True)
    assert torch.equal(ei, fi) and torch.equal(ev, fv)


def test_bf16_cosine_near_ties_fall_back_and_match():
    # Duplicated and near-duplicated keys: ties and gaps far below the bfloat16 error bound.
    g = torch.Generator().manual_seed(9)
    q, keys = _random(120, 1500, 128, seed=10)
    keys[100:140] = keys[5]                                                 # 41 identical keys
    keys[200:230] = keys[7] + 1e-4 * torch.randn([30, 128], generator=g)    # near-duplicates
    q[:40] = keys[5] + 1e-3 * torch.randn([40, 128], generator=g)
    q[40:80] = keys[7] + 1e-3 * torch.randn([40, 128], generator=g)
    _, _, fallback = nn_search.cosine_search(q, keys, k=2, chunk=64, fast=True)
    assert len(fallback) >= 40 and len(fallback) < len(q) # exact ties fall back, the rest is certified
    ev, ei = _exact_cosine(q, keys, 2)
    fv, fi = nn_search.cosine_topk(q, keys, k=2, chunk=64, fast=True)
    assert torch.equal(ei, fi) and torch.equal(ev, fv)


def test_bf16_error_bound_holds_empirically():
    q, keys = _random(64, 3000, 1536, seed=11)
    q, keys = nn_search.normalize(q), nn_search.normalize(keys)
    approx = (q.bfloat16() @ keys.bfloat16().T).double()
    err = (approx - q.double() @ keys.double().T).abs().max().item()
    # The certificate assumes at most ~2^-8 + 2^-9 (input rounding, output rounding) plus accumulation.
    assert err < 2**-8 + 2**-9


def test_fast_option_validated():
    q, keys = _random(4, 10, 8, seed=12)
    with pytest.raises(ValueError):
        nn_search.cosine_topk(q, keys, fast='maybe')


_DETERMINISM_SCRIPT = r'''
import sys, torch
from ambient.metrics import nn_search
torch.set_num_threads(int(sys.argv[1]))
g = torch.Generator().manual_seed(13)
keys = torch.randn([3000, 384], generator=g)
keys[100:120] = keys[5]                                           # exact duplicates
keys[200:230] = keys[7] + 1e-5 * torch.randn([30, 384], generator=g)  # near-duplicates
q = torch.randn([200, 384], generator=g)
q[:30] = keys[5] + 1e-2 * torch.randn([30, 384], generator=g)
q[30:60] = keys[7] + 1e-3 * torch.randn([30, 384], generator=g)
q[60:70] = keys[300:310]                                          # exact copies
pixels = torch.randint(0, 256, [3000, 768], generator=g)              # L2 as the memorization metric runs it:
pixels[100:120] = pixels[5]                                           # float64 queries of integer pixels
pixels[200:230] = (pixels[7] + torch.randint(-1, 2, [30, 768], generator=g)).clamp(0, 255)
pixels = pixels.to(torch.uint8)
pq = pixels[torch.arange(0, 3000, 15)].double()
pq[:30] += torch.randint(-2, 3, [30, 768], generator=g)
out = []
for fast in (False, True):
    for chunk in (16, nn_search.DEFAULT_CHUNK):
        v, i = nn_search.cosine_topk(q, keys, k=2, chunk=chunk, backend='torch', fast=fast)
        out.append(v.numpy().tobytes().hex() + ':' + i.numpy().tobytes().hex())
        d, j = nn_search.l2_topk(pq, pixels, k=2, chunk=chunk, backend='torch')
        out.append(d.numpy().tobytes().hex() + ':' + j.numpy().tobytes().hex())
print('\n'.join(out))
'''


def test_same_result_for_any_threads_chunk_and_path(tmp_path):
    # The reported neighbours and values depend on the features only: 1 or 2 threads, chunk 16 or the
    # default, the float32 or bfloat16 candidate pass all give the same bytes (kernels of other shapes and
    # other CPUs round the candidate scores differently; the exact rescoring removes that).
    import os
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(nn_search.__file__))))
    runs = []
    for threads in ('1', '2'):
        env = dict(os.environ, OMP_NUM_THREADS=threads, PYTHONPATH=repo)
        proc = subprocess.run([sys.executable, '-c', _DETERMINISM_SCRIPT, threads], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs.append(proc.stdout.splitlines())
    cosine = [line for run in runs for line in run[0::2]]
    l2 = [line for run in runs for line in run[1::2]]
    assert len(cosine) == 8 and len(set(cosine)) == 1
    assert len(l2) == 8 and len(set(l2)) == 1


def test_values_are_the_exact_cosine_rounded_once():
    import math
    q, keys = _random(20, 500, 256, seed=14)
    v, i = nn_search.cosine_topk(q, keys, k=2, chunk=32, fast=False)
    for r in range(20):
        for c in range(2):
            a, b = q[r].double().tolist(), keys[i[r, c]].double().tolist()
            exact = math.fsum(x * y for x, y in zip(a, b)) / math.sqrt(math.fsum(x * x for x in a) * math.fsum(y * y for y in b))
            # One float32 rounding of a float64 value within 1e-15 of the exact cosine.
            assert abs(v[r, c].item() - exact) <= 2.0**-24 * abs(exact) + 1e-15
    best = (nn_search.normalize(q).double() @ nn_search.normalize(keys).double().T).topk(2, dim=1).indices
    assert torch.equal(i, best)


def test_fixed_order_sum_matches_fsum_and_ignores_layout():
    import math
    g = torch.Generator().manual_seed(15)
    x = torch.randn([7, 1000], generator=g, dtype=torch.float64) * 1e3
    s = nn_search.fixed_order_sum(x)
    for r in range(7):
        assert abs(s[r].item() - math.fsum(x[r].tolist())) <= 1e-9
    # The same row gives the same bits alone, in a batch, or as a non-contiguous view.
    assert torch.equal(nn_search.fixed_order_sum(x[3:4]), s[3:4])
    assert torch.equal(nn_search.fixed_order_sum(x.T.contiguous().T), s)


@pytest.mark.parametrize('chunk', [16, 4096])
def test_l2_bfloat16_candidates_give_the_same_bytes(chunk):
    # Smooth images (certified by the bfloat16 bound), exact duplicates, a near copy and a tight cluster of near ties
    # (left open by the bound and sent through the float32 pass): the same distances and indices as fast=False.
    rng = np.random.default_rng(0)
    coarse = torch.from_numpy(rng.uniform(0, 255, size=[300, 3, 4, 4]).astype(np.float32))
    x = torch.nn.functional.interpolate(coarse, size=(16, 16), mode='bilinear').flatten(1).numpy()
    x = np.rint(x + rng.normal(0, 4, size=x.shape)).clip(0, 255)
    x[100:104] = x[0]
    x[200] = x[5] + 1
    x[250:290] = np.clip(x[7] + rng.integers(-1, 2, size=[40, x.shape[1]]), 0, 255)
    keys = torch.from_numpy(x - 127.5)
    slow = nn_search.l2_topk(keys.float(), keys, k=3, chunk=chunk, fast=False)
    fast = nn_search.l2_topk(keys.float(), keys, k=3, chunk=chunk, fast=True)
    assert torch.equal(slow[0], fast[0]) and torch.equal(slow[1], fast[1])
    assert (fast[0][:, 0] == 0).all() and (fast[1][:, 0] == torch.arange(300)).sum() > 200  # self first unless duplicated
