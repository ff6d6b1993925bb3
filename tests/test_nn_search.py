"""Tests for ambient.nn_search: the chunked exact search agrees with brute force."""

import pytest
import torch

from ambient import nn_search


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
    qn, kn = nn_search.normalize(q), nn_search.normalize(keys)
    _, _, fallback = nn_search._cosine_topk_bf16(qn, kn, 2, 64) # pylint: disable=protected-access
    assert len(fallback) >= 80 and len(fallback) < len(q) # near-ties fall back, the rest is certified
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
