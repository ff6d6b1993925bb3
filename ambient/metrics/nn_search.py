"""Exact nearest-neighbour search (cosine and L2 top-k): fast candidate passes, then exact scores that every machine computes alike.

Cosine search runs in two steps. A candidate pass (float32 blocks, a bfloat16 pass on CPUs with native bfloat16,
or faiss) keeps the k + CANDIDATE_EXTRA best keys of each query together with an upper bound on the true
similarity of every key it dropped. The candidates are then scored again in float64 with a fixed order of
operations (`fixed_order_sum`): elementwise IEEE products and sums give the same bits on every CPU and GPU,
at any thread count, chunk size or number of ranks. The k best by that score (ties to the lower key index)
are the answer when the k-th clears the bound by more than the float64 error; other queries (near-ties deeper
than the candidate list) are searched exhaustively in float64. The reported values are those float64 scores,
rounded once to float32. So the result depends on the features only, never on the kernels that ranked them.
"""

import contextlib

import torch

DEFAULT_CHUNK = 4096        # score blocks hold at most chunk x chunk values (64 MiB in float32)
FAISS_MIN_KEYS = 200_000    # below this the chunked torch search is as fast and needs no extra package
RERANK_EXTRA = 8            # extra L2 candidates re-ranked by exact distances
CANDIDATE_EXTRA = 6         # extra cosine candidates kept by the float32 candidate pass
BF16_EXTRA = 14             # ... and by the bfloat16 pass, whose wider error bound needs a deeper list
BF16_MIN_WORK = 2**36       # queries * keys * dim above which cosine_topk(fast='auto') uses the bfloat16 pass on CPU
FIXED_BLOCK = 2**21         # float64 values per block of the fixed-order scoring (16 MiB)
F32_EPS, F64_EPS = 2.0**-24, 2.0**-53   # unit roundoffs


def _faiss():
    """The faiss module, or None when it is not installed."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _use_faiss(backend, num_keys, device):
    """Decide between faiss and the chunked torch search."""
    if backend not in ('auto', 'torch', 'faiss'):
        raise ValueError(f'unknown backend {backend!r}')
    if backend == 'torch':
        return False
    available = _faiss() is not None
    if backend == 'faiss':
        if not available:
            raise ImportError('backend="faiss" needs the faiss package (pip install faiss-cpu)')
        return True
    # faiss-cpu would pull GPU features back to the host; the chunked search on the GPU is fast already.
    return available and num_keys >= FAISS_MIN_KEYS and torch.device(device).type == 'cpu'


def _check(queries, keys, k):
    """Validate shapes of a search."""
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f'expected [N, D] queries and [M, D] keys, got {list(queries.shape)} and {list(keys.shape)}')
    if keys.shape[0] == 0:
        raise ValueError('no keys to search')
    if k < 1:
        raise ValueError('k must be at least 1')


def _floating(x):
    x = torch.as_tensor(x)
    return x if x.is_floating_point() else x.to(torch.float32)


def normalize(x, eps=1e-12):
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = _floating(x)
    return x / x.norm(dim=1, keepdim=True).clamp(min=eps)

#----------------------------------------------------------------------------
# Fixed-order float64 arithmetic.

def fixed_order_sum(x):
    """Row sums of a float64 [R, D] tensor, added pairwise in one fixed order: the same bits on every machine."""
    # Each step is one elementwise IEEE addition per output (column j plus column j + half; an odd last
    # column waits for a later step), so no kernel, vector width or thread count can change the order, as a
    # BLAS dot product or torch.sum may.
    while x.shape[1] > 1:
        width = x.shape[1]
        half = width // 2
        summed = x[:, :half] + x[:, half : 2 * half]
        x = torch.cat([summed, x[:, 2 * half :]], dim=1) if width % 2 else summed
    return x[:, 0] if x.shape[1] else torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)


def _row_block(dim):
    return max(1, FIXED_BLOCK // max(1, dim))


def squared_norms(x):
    """float64 squared L2 norms of the rows of x, in fixed order."""
    step = _row_block(x.shape[1])
    out = torch.empty([x.shape[0]], dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], step):
        out[i : i + step] = fixed_order_sum(x[i : i + step].to(torch.float64).square())
    return out


def _pair_dots(a, b, rows_a, rows_b):
    """float64 dot products a[rows_a[j]] . b[rows_b[j]] in fixed order."""
    step = _row_block(a.shape[1])
    # Products of float32 (or narrower) values are exact in float64; the mixed-dtype multiply converts on the fly.
    out = [fixed_order_sum(a[rows_a[j : j + step]].to(torch.float64) * b[rows_b[j : j + step]])
           for j in range(0, len(rows_a), step)]
    return torch.cat(out) if out else torch.zeros([0], dtype=torch.float64, device=a.device)


def _pair_cosines(queries, qq, keys, kk, rows_q, rows_k):
    """Cosine similarity of each (query, key) pair in fixed-order float64; 0 where either vector is zero."""
    dots = _pair_dots(queries, keys, rows_q, rows_k)
    denom = qq[rows_q].sqrt() * kk[rows_k].to(dots.device).sqrt()
    return torch.where(denom > 0, dots / denom.clamp(min=torch.finfo(torch.float64).tiny), torch.zeros_like(dots))


def _unit_rows(x):
    """float32 unit rows: x times 1/|x| (|x| in float64, the factor rounded once); zero rows stay zero."""
    step = _row_block(x.shape[1])
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    for i in range(0, x.shape[0], step):
        norm = torch.linalg.vector_norm(x[i : i + step], dim=1, dtype=torch.float64)
        scale = torch.where(norm > 0, 1 / norm.clamp(min=1e-300), torch.zeros_like(norm))
        out[i : i + step] = x[i : i + step].to(torch.float32) * scale.to(torch.float32)[:, None]
    return out


def _score_error(dim):
    """Bound on |fixed-order float64 cosine - true cosine| (dot, two norms, square roots, division)."""
    return 4 * (dim + 8) * F64_EPS + 1e-15

#----------------------------------------------------------------------------
# Candidate passes: (indices [N, m], bound [N]) with every dropped key's true cosine <= bound.

def _merged_topk(n, num_keys, m, q_step, k_step, block_topk, dtype, device):
    """Running top-m over key blocks, a block of queries at a time: block_topk(q0, k0) gives one block's top
    (values, indices within the block); each block's list merges into the running one."""
    out_v = torch.empty([n, m], dtype=dtype, device=device)
    out_i = torch.empty([n, m], dtype=torch.int64, device=device)
    for q0 in range(0, n, q_step):
        best_v = best_i = None
        for k0 in range(0, num_keys, k_step):
            v, i = block_topk(q0, k0)
            i += k0
            if best_v is not None:
                v, i = torch.cat([best_v, v], dim=1), torch.cat([best_i, i], dim=1)
            if v.shape[1] > m:
                v, sel = v.topk(m, dim=1)
                i = i.gather(1, sel)
            best_v, best_i = v, i
        out_v[q0 : q0 + q_step], out_i[q0 : q0 + q_step] = best_v, best_i
    return out_v, out_i


def _running_topk(queries, keys, m, chunk, score_fn):
    """Top-m of score_fn(query_block, key_block) over all keys, with at most ~chunk*chunk scores in memory."""
    n, num_keys = queries.shape[0], keys.shape[0]
    chunk = max(int(chunk), 1)
    # Fewer queries than chunk leave room for wider key blocks under the same chunk*chunk budget;
    # a converted key block (uint8 pixels to float) also stays within that budget.
    q_step = max(1, min(chunk, n))
    k_step = max(chunk, min(chunk * chunk // q_step, chunk * chunk // max(1, keys.shape[1])))
    def block_topk(q0, k0):
        block = keys[k0 : k0 + k_step].to(device=queries.device, dtype=queries.dtype)
        return score_fn(queries[q0 : q0 + q_step], block).topk(min(m, block.shape[0]), dim=1)
    return _merged_topk(n, num_keys, m, q_step, k_step, block_topk, queries.dtype, queries.device)


@contextlib.contextmanager
def _full_float32(device):
    """No TF32 in float32 products on CUDA: the candidate bound assumes float32 rounding."""
    if torch.device(device).type != 'cuda':
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def _accumulation(dim, eps):
    """Worst-case relative error of a length-dim dot product accumulated with unit roundoff eps."""
    return dim * eps / (1 - dim * eps)

# Each float32 unit row differs from the true unit vector by at most three float32 roundings per component
# (input, scale factor, product), so the product of two differs from the true cosine by under 6.5 F32_EPS.
_NORMALIZATION_ERROR = 6.5 * F32_EPS


def _float32_error(dim):
    """Bound on |float32 product of two unit rows - true cosine|."""
    return _accumulation(dim, F32_EPS) * (1 + 8 * F32_EPS) + _NORMALIZATION_ERROR


def _near_kth(dim):
    """How far below the k-th best float32 product a key of the exact top-k can lie: |float32 - true| <= e for every
    key, so such a key (true cosine >= the k-th true value >= the k-th product - e) has a product >= the k-th
    product - 2e (plus the float64 scores' own error)."""
    return 2 * _float32_error(dim) + 4 * _score_error(dim)


def _candidates_float32(qn, kn, m, chunk):
    """The m best keys by float32 product; a dropped key scored at most the m-th value S, true cosine <= S + error."""
    with _full_float32(qn.device):
        v, i = _running_topk(qn, kn, m, chunk, lambda q, b: q @ b.T)
    return i, v[:, -1].double() + _float32_error(qn.shape[1])


def _candidates_faiss(qn, kn, m):
    """As _candidates_float32, searched by faiss's flat inner-product index (float32 BLAS)."""
    faiss = _faiss()
    index = faiss.IndexFlatIP(kn.shape[1])
    index.add(kn.cpu().contiguous().numpy())
    v, i = index.search(qn.cpu().contiguous().numpy(), m)
    v, i = torch.from_numpy(v).to(qn.device), torch.from_numpy(i).to(qn.device)
    return i, v[:, -1].double() + _float32_error(qn.shape[1])


def _block_topk(scores, m, groups=32):
    """Top-m of each row of a score block, via group maxima (an elementwise reduction much cheaper than topk).

    Column c belongs to group c mod (cols / groups). The m best entries lie in the m groups with the largest
    maxima, so every entry left out is at most the m-th value returned.
    """
    rows, cols = scores.shape
    if cols % groups or cols // groups < 4 * m:
        return scores.topk(min(m, cols), dim=1)
    width = cols // groups
    best_groups = scores.view(rows, groups, width).amax(dim=1).topk(m, dim=1).indices
    cand = (best_groups[:, :, None] + torch.arange(0, cols, width, device=scores.device)).flatten(1)
    v, sel = scores.gather(1, cand).topk(m, dim=1)
    return v, cand.gather(1, sel)


def _bf16_norms(x, xb):
    """[N, 3] float64: |x|, |bf16(x)| and |bf16(x) - x| of every row, in row blocks, inflated past their rounding."""
    step = _row_block(x.shape[1])
    out = torch.empty([x.shape[0], 3], dtype=torch.float64, device=x.device)
    for j in range(0, x.shape[0], step):
        exact = x[j : j + step].to(torch.float64)
        wide = xb[j : j + step].to(torch.float64)
        out[j : j + step] = torch.stack([exact.norm(dim=1), wide.norm(dim=1), (wide - exact).norm(dim=1)], dim=1)
    return out * (1 + 1e-9)


def _bf16_steps(chunk, n):
    """Query and key block sizes of a bfloat16 candidate pass: wide key blocks (8 chunk^2 bfloat16 scores at most,
    128 MiB at the default chunk), so fewer merges of running top-m lists."""
    chunk = max(int(chunk), 1)
    q_step = max(1, min(chunk // 2, n))
    return q_step, max(chunk, 4 * chunk * chunk // q_step)


def _candidates_bf16(qn, kn, m, k, chunk):
    """The m best keys by a bfloat16 product (native on AVX512-BF16 / AMX CPUs), with a proven bound.

    With qb = bf16(q), xb = bf16(x), products qb_i xb_i are exact in float32 and accumulated in float32, so the
    product t (before its final rounding to bf16) obeys |t - q.x| <= |qb - q| |xb| + |q| |xb - x| + g |qb| |xb|,
    g = D 2^-24 / (1 - D 2^-24); the output rounding adds |bf16(t) - t| <= 2^-9 |t|. A key outside the m
    candidates has bf16(t) <= v_m (the m-th bf16 score), hence q.x <= v_m + 2^-9 |v_m| / (1 - 2^-9) + E(q).
    """
    n, num_keys, dim = qn.shape[0], kn.shape[0], kn.shape[1]
    qb, kb = qn.to(torch.bfloat16), kn.to(torch.bfloat16)
    g = _accumulation(dim, F32_EPS)
    x_norm, xb_norm, dx = _bf16_norms(kn, kb).max(dim=0).values.tolist()
    q_norm, qb_norm, dq = _bf16_norms(qn, qb).unbind(1)
    err = (dq * xb_norm + q_norm * dx + g * (qb_norm * xb_norm + q_norm * x_norm)) * (1 + 1e-6) + 1e-12
    q_step, k_step = _bf16_steps(chunk, n)
    cand_v, cand_i = _merged_topk(n, num_keys, m, q_step, k_step,
                                  lambda q0, k0: _block_topk(qb[q0 : q0 + q_step] @ kb[k0 : k0 + k_step].T, m),
                                  torch.bfloat16, qn.device)
    v = cand_v.double()
    v_err = err[:, None] + v.abs() * (2.0**-9 / (1 - 2.0**-9)) + _NORMALIZATION_ERROR
    bound = v[:, -1] + v_err[:, -1]
    # A candidate whose interval lies wholly below k others' cannot be among the k best: no float32 product
    # is computed for it (most of the list, on most queries).
    kth_lower = (v - v_err).topk(min(k, m), dim=1).values[:, -1:]
    possible = v + v_err >= kth_lower - 4 * _score_error(dim)
    return cand_i, bound, possible

#----------------------------------------------------------------------------
# Exact scores of the candidates, the certificate, and the exhaustive fallback.

def _rank(scores, indices, k):
    """The k best of each row by score, descending, ties to the lower index."""
    indices, order = indices.sort(dim=1, stable=True)
    scores = scores.gather(1, order)
    scores, order = scores.sort(dim=1, descending=True, stable=True)
    return scores[:, :k], indices.gather(1, order)[:, :k]


def _threshold_pass(qn, kn, queries, keys, k, chunk):
    """Exact top-k of a few queries that the candidate pass left open: float32 products against every key,
    then fixed-order scores of all keys whose product is within the float32 error of the k-th best."""
    tol = _near_kth(kn.shape[1])
    out_v = torch.empty([qn.shape[0], k], dtype=torch.float64, device=qn.device)
    out_i = torch.empty([qn.shape[0], k], dtype=torch.int64, device=qn.device)
    rows = max(1, max(int(chunk), 1) ** 2 // kn.shape[0])
    with _full_float32(qn.device):
        for r0 in range(0, qn.shape[0], rows):
            s = qn[r0 : r0 + rows] @ kn.T
            kth = s.topk(k, dim=1).values[:, -1:].double()
            for j, row in enumerate((s.double() >= kth - tol).unbind(0)):
                cols = row.nonzero()[:, 0]
                d = _exact_cosines(queries[r0 + j : r0 + j + 1], keys[cols], torch.zeros_like(cols), torch.arange(len(cols), device=cols.device))
                out_v[r0 + j], out_i[r0 + j] = (x[0] for x in _rank(d[None], cols[None], k))
    return out_v, out_i


def _candidate_products(qn, kn, cand_i, possible=None, rows=64):
    """float32 products of each query with its candidates (those marked possible; -inf for the others), by small
    blocks against the union of their keys."""
    out = torch.full(cand_i.shape, -torch.inf, dtype=torch.float32, device=qn.device)
    with _full_float32(qn.device):
        for q0 in range(0, qn.shape[0], rows):
            ci = cand_i[q0 : q0 + rows]
            mask = torch.ones_like(ci, dtype=torch.bool) if possible is None else possible[q0 : q0 + rows]
            uniq, inv = ci[mask].unique(return_inverse=True)
            block = qn[q0 : q0 + rows] @ kn[uniq].T
            part = out[q0 : q0 + rows]
            part[mask] = block[mask.nonzero()[:, 0], inv]
    return out


def _exact_cosines(queries, keys, rows_q, rows_k):
    """Fixed-order float64 cosines of (query, key) pairs; norms computed only for the rows involved."""
    uq, iq = rows_q.unique(return_inverse=True)
    uk, ik = rows_k.unique(return_inverse=True)
    qs, ks = queries[uq], keys[uk]
    return _pair_cosines(qs, squared_norms(qs), ks, squared_norms(ks), iq, ik)


def cosine_search(queries, keys, k=2, chunk=DEFAULT_CHUNK, backend='auto', fast='auto'):
    """Exact top-k cosine search with details: (values [N, k] float32, indices [N, k], fallback).

    fallback lists the queries that the candidate pass could not settle (searched by the threshold pass).
    """
    queries, keys = _floating(queries), _floating(keys)
    _check(queries, keys, k)
    k = min(k, keys.shape[0])
    n, num_keys, dim = queries.shape[0], keys.shape[0], keys.shape[1]
    use_faiss = _use_faiss(backend, num_keys, queries.device)
    use_bf16 = _use_bf16(fast, n, num_keys, dim) and queries.device.type == 'cpu' and keys.device.type == 'cpu'
    keys = keys if keys.device == queries.device else keys.to(queries.device)
    qn, kn = _unit_rows(queries), _unit_rows(keys)
    possible = None # candidates that can be among the k best (None: all)
    m = min(num_keys, k + (BF16_EXTRA if use_bf16 else CANDIDATE_EXTRA))
    if m == num_keys: # every key is a candidate: nothing is dropped
        cand_i = torch.arange(num_keys, device=queries.device).expand(n, num_keys)
        bound = torch.full([n], -torch.inf, dtype=torch.float64, device=queries.device)
    elif use_faiss:
        cand_i, bound = _candidates_faiss(qn, kn, m)
    elif use_bf16:
        cand_i, bound, possible = _candidates_bf16(qn, kn, m, k, chunk)
    else:
        cand_i, bound = _candidates_float32(qn, kn, m, chunk)
    # Only candidates whose float32 product is near the k-th best can be among the k best: score those exactly.
    s32 = _candidate_products(qn, kn, cand_i, possible)
    kth = s32.topk(k, dim=1).values[:, -1:].double()
    keep = s32.double() >= kth - _near_kth(dim)
    rq, rc = keep.nonzero(as_tuple=True)
    scores = torch.full(cand_i.shape, -torch.inf, dtype=torch.float64, device=queries.device)
    scores[rq, rc] = _exact_cosines(queries, keys, rq, cand_i[rq, rc])
    values, indices = _rank(scores, cand_i, k)
    # Certified: every dropped key's exact score is below the k-th chosen one.
    ok = values[:, -1] - 2 * _score_error(dim) > bound
    fallback = (~ok).nonzero()[:, 0]
    if len(fallback):
        values[fallback], indices[fallback] = _threshold_pass(qn[fallback], kn, queries[fallback], keys, k, chunk)
    return values.clamp(-1, 1).to(torch.float32), indices, fallback


def _bf16_supported(device):
    """bfloat16 matrix products run natively (AVX512-BF16 / AMX) on this CPU."""
    if torch.device(device).type != 'cpu':
        return False
    from torch_utils import cpu_features # pylint: disable=import-outside-toplevel
    return cpu_features.native_bf16()


def _use_bf16(fast, n, num_keys, dim):
    if fast not in ('auto', True, False):
        raise ValueError(f'unknown fast option {fast!r}')
    if fast is False:
        return False
    if fast is True:
        return True
    return n * num_keys * dim >= BF16_MIN_WORK and _bf16_supported('cpu')


def cosine_topk(queries, keys, k=2, chunk=DEFAULT_CHUNK, backend='auto', fast='auto'):
    """Exact k most cosine-similar keys of every query: (similarities [N, k] descending, indices [N, k]).

    The result depends only on the features: the same bits for any backend, fast option, chunk, thread count,
    number of ranks and CPU. fast: True takes the bfloat16 candidate pass; 'auto' does so on CPUs with native
    bfloat16 for large problems (queries * keys * dim >= BF16_MIN_WORK); False the float32 one.
    """
    values, indices, _ = cosine_search(queries, keys, k=k, chunk=chunk, backend=backend, fast=fast)
    return values, indices

#----------------------------------------------------------------------------
# L2.

def _sort_by_value_then_index(values, indices):
    """Reorder each row by ascending value, ties broken by the lower index, so ties never depend on chunking."""
    indices, order = indices.sort(dim=1, stable=True)
    values = values.gather(1, order)
    values, order = values.sort(dim=1, stable=True)
    return values, indices.gather(1, order)


def _pair_sq_distances(queries, keys, rows_q, rows_k):
    """float64 squared L2 distances of (query, key) pairs, in fixed order (exact for integer-valued data)."""
    step = _row_block(keys.shape[1])
    out = [fixed_order_sum((queries[rows_q[j : j + step]].to(torch.float64) -
                            keys[rows_k[j : j + step]].to(device=queries.device, dtype=torch.float64)).square())
           for j in range(0, len(rows_q), step)]
    return torch.cat(out) if out else torch.zeros([0], dtype=torch.float64, device=queries.device)


def _rank_ascending(values, indices, k):
    """The k smallest of each row, ties to the lower index."""
    values, indices = _sort_by_value_then_index(values, indices)
    return values[:, :k], indices[:, :k]


def _l2_candidates_bf16(queries, keys, qq, kk, m, chunk):
    """The m best keys of each query by 2 q.x - |x|^2 from a bfloat16 product, with a proven bound: (indices, lower).

    As in _candidates_bf16, the float32-accumulated product t of the bfloat16 roundings obeys |t - q.x| <=
    |qb - q| |xb| + |q| |xb - x| + g |qb| |xb|, and its output rounding to bfloat16 adds at most 2^-9 |t|; the score
    2 bf16(t) - |x|^2 is then formed in float32 (relative error 2^-23 per operation). Every key left out has a true
    score below the m-th computed one plus that error E(q), so its squared distance |q|^2 - score is at least
    lower = |q|^2 - (v_m + E(q)).
    """
    n, num_keys, dim = queries.shape[0], keys.shape[0], keys.shape[1]
    q32 = queries.to(torch.float32)
    qb, kb = q32.to(torch.bfloat16), keys.to(torch.float32).to(torch.bfloat16)
    g = _accumulation(dim, F32_EPS)
    x_norm, xb_norm, dx = _bf16_norms(keys, kb).max(dim=0).values.tolist()
    q_norm, qb_norm, dq = _bf16_norms(queries, qb).unbind(1)
    t_max = qb_norm * xb_norm * (1 + g)
    kk32 = kk.to(torch.float32).to(queries.device)
    kk_max = float(kk.max())
    err = 2 * (dq * xb_norm + q_norm * dx + g * qb_norm * xb_norm) + 2 * t_max * (2.0**-9 / (1 - 2.0**-9))
    # float32 rounding of |x|^2 and of the subtraction (each within 2^-23 of its operands' magnitudes).
    err = (err + 4 * F32_EPS * (2 * t_max * (1 + 2.0**-8) + kk_max)) * (1 + 1e-6) + 1e-9
    q_step, k_step = _bf16_steps(chunk, n)
    def block_topk(q0, k0):
        scores = (qb[q0 : q0 + q_step] @ kb[k0 : k0 + k_step].T).to(torch.float32)
        return _block_topk(scores.mul_(2).sub_(kk32[None, k0 : k0 + k_step]), m)
    cand_v, cand_i = _merged_topk(n, num_keys, m, q_step, k_step, block_topk, torch.float32, queries.device)
    lower = qq.to(queries.device) - (cand_v[:, -1].double() + err)
    return cand_i, lower


def l2_topk(queries, keys, k=2, chunk=DEFAULT_CHUNK, backend='auto', fast=False):
    """Exact k nearest keys of every query in L2 distance: (distances [N, k] ascending, indices [N, k]).

    Candidates are ranked in the queries' dtype (float64 queries: exact for integer-valued data such as
    pixels), then their distances computed in fixed-order float64, so the result is the same on every machine.
    Equal distances are listed by key index, also when more keys tie than the candidate list holds: a query
    whose candidates cannot be certified is searched exhaustively. fast: True ranks candidates with a bfloat16
    product (certified the same way; the queries it cannot certify go through the float32 pass), 'auto' does so
    on CPUs with native bfloat16 for large problems; the result is the same bytes either way.
    """
    queries = _floating(queries)
    keys = torch.as_tensor(keys)
    _check(queries, keys, k)
    k = min(k, keys.shape[0])
    n, num_keys, dim = queries.shape[0], keys.shape[0], keys.shape[1]
    eps = torch.finfo(queries.dtype).eps / 2
    qq = squared_norms(queries)
    kk = squared_norms(keys)
    m = min(num_keys, k + RERANK_EXTRA)
    if backend != 'faiss' and queries.device.type == 'cpu' and num_keys > m and _use_bf16(fast, n, num_keys, dim):
        i, lower = _l2_candidates_bf16(queries, keys, qq, kk, m, chunk)
        rows = torch.arange(n, device=queries.device).repeat_interleave(m)
        d2 = _pair_sq_distances(queries, keys, rows, i.reshape(-1).to(keys.device)).view(n, m)
        values, indices = _rank_ascending(d2, i, k)
        open_rows = (~(values[:, -1] * (1 + 4 * dim * F64_EPS) < lower)).nonzero()[:, 0]
        if len(open_rows):
            _, j = l2_topk(queries[open_rows], keys, k=k, chunk=chunk, backend='torch', fast=False)
            again = _pair_sq_distances(queries, keys, open_rows.repeat_interleave(k), j.reshape(-1).to(keys.device))
            values[open_rows], indices[open_rows] = again.view(-1, k), j
        return values.sqrt().to(queries.dtype), indices
    b_max = float(kk.max().sqrt()) * (1 + 1e-12)
    if _use_faiss(backend, num_keys, queries.device):
        faiss = _faiss()
        index = faiss.IndexFlatL2(dim)
        index.add(keys.cpu().float().contiguous().numpy())
        v, i = index.search(queries.cpu().float().contiguous().numpy(), m)
        v, i = torch.from_numpy(v).double().to(queries.device), torch.from_numpy(i).to(queries.device)
        eps = max(eps, F32_EPS)
        # faiss reports |q - b|^2 as |q|^2 + |b|^2 - 2 q.b in float32: a lower bound on dropped keys' distance.
        lower = v[:, -1]
    else:
        # Maximising 2<q,b> - |b|^2 ranks keys by distance without forming q - b.
        def score(q, b):
            return 2 * (q @ b.T) - b.square().sum(dim=1)[None, :]
        v, i = _running_topk(queries, keys, m, chunk, score)
        lower = qq.to(queries.device) - v[:, -1].double()
    # Rounding of the candidate scores: |error| <= g (2 |q| |b| + |b|^2 + |q|^2), g for D + 4 operations.
    q_norm = qq.to(queries.device).sqrt() * (1 + 1e-12)
    err = _accumulation(dim + 4, eps) * (2 * q_norm * b_max + b_max**2 + q_norm**2) + 1e-300
    rows = torch.arange(n, device=queries.device).repeat_interleave(m)
    d2 = _pair_sq_distances(queries, keys, rows, i.reshape(-1).to(keys.device)).view(n, m)
    values, indices = _rank_ascending(d2, i, k)
    # Certified when every dropped key is provably farther than the k-th chosen one.
    ok = (values[:, -1] * (1 + 4 * dim * F64_EPS) < lower - err) if m < num_keys else torch.ones_like(lower, dtype=torch.bool)
    for r in (~ok).nonzero()[:, 0].tolist():
        all_d2 = _pair_sq_distances(queries, keys, torch.full([num_keys], r, device=queries.device),
                                    torch.arange(num_keys, device=keys.device))
        values[r], indices[r] = (x[0] for x in _rank_ascending(all_d2[None], torch.arange(num_keys, device=queries.device)[None], k))
    return values.sqrt().to(queries.dtype), indices
