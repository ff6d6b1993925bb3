"""Exact nearest-neighbour search (cosine and L2 top-k) by chunked matrix products."""

import torch

DEFAULT_CHUNK = 4096        # score blocks hold at most chunk x chunk values (64 MiB in float32)
FAISS_MIN_KEYS = 200_000    # below this the chunked torch search is as fast and needs no extra package
RERANK_EXTRA = 8            # extra L2 candidates re-ranked by exact distances
BF16_EXTRA = 6              # extra cosine candidates kept by the bfloat16 pass
BF16_MIN_WORK = 2**36       # queries * keys * dim above which cosine_topk(fast='auto') uses the bfloat16 pass on CPU


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


def _chunked_max_topk(queries, keys, k, chunk, score_fn):
    """Top-k of score_fn(query_block, key_block) over all keys, with at most chunk*chunk scores in memory."""
    n, m = queries.shape[0], keys.shape[0]
    k = min(k, m)
    chunk = max(int(chunk), 1)
    # Fewer queries than chunk leave room for wider key blocks under the same chunk*chunk budget;
    # a converted key block (uint8 pixels to float) also stays within that budget.
    q_step = max(1, min(chunk, n))
    k_step = max(chunk, min(chunk * chunk // q_step, chunk * chunk // max(1, keys.shape[1])))
    device = queries.device
    out_v = torch.empty([n, k], dtype=queries.dtype, device=device)
    out_i = torch.empty([n, k], dtype=torch.int64, device=device)
    for q0 in range(0, n, q_step):
        q = queries[q0 : q0 + q_step]
        best_v = torch.full([q.shape[0], 0], -torch.inf, dtype=queries.dtype, device=device)
        best_i = torch.empty([q.shape[0], 0], dtype=torch.int64, device=device)
        for k0 in range(0, m, k_step):
            block = keys[k0 : k0 + k_step].to(device=device, dtype=queries.dtype)
            scores = score_fn(q, block)
            v, i = scores.topk(min(k, block.shape[0]), dim=1)
            # Running best first, so that among exact ties the earlier key tends to win.
            best_v = torch.cat([best_v, v], dim=1)
            best_i = torch.cat([best_i, i + k0], dim=1)
            if best_v.shape[1] > k:
                best_v, sel = best_v.topk(k, dim=1)
                best_i = best_i.gather(1, sel)
        out_v[q0 : q0 + q_step] = best_v
        out_i[q0 : q0 + q_step] = best_i
    return out_v, out_i


def _check(queries, keys, k):
    """Validate shapes of a search."""
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f'expected [N, D] queries and [M, D] keys, got {list(queries.shape)} and {list(keys.shape)}')
    if keys.shape[0] == 0:
        raise ValueError('no keys to search')
    if k < 1:
        raise ValueError('k must be at least 1')


def normalize(x, eps=1e-12):
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = torch.as_tensor(x)
    x = x if x.is_floating_point() else x.to(torch.float32)
    return x / x.norm(dim=1, keepdim=True).clamp(min=eps)


def _bf16_supported(device):
    """bfloat16 matrix products run natively (AVX512-BF16 / AMX) on this CPU."""
    if torch.device(device).type != 'cpu':
        return False
    try:
        with open('/proc/cpuinfo', encoding='ascii', errors='ignore') as f:
            flags = f.read()
    except OSError:
        return False
    return 'avx512_bf16' in flags or 'amx_bf16' in flags


def _use_bf16(fast, queries, keys, k):
    if fast not in ('auto', True, False):
        raise ValueError(f'unknown fast option {fast!r}')
    if fast is not True and fast != 'auto':
        return False
    if queries.dtype != torch.float32 or k >= keys.shape[0]:
        return False
    if fast is True:
        return True
    work = queries.shape[0] * keys.shape[0] * keys.shape[1]
    return work >= BF16_MIN_WORK and _bf16_supported(queries.device)


def _cosine_topk_bf16(queries, keys, k, chunk, extra=BF16_EXTRA):
    """The exact float32 path's top-k, found by a bfloat16 pass, exact float32 rescoring and a certificate.

    queries and keys are float32 unit rows, k < len(keys). Returns (values, indices, fallback), where fallback
    holds the queries that the certificate could not settle; those were searched by the exact path.

    Bound: with qb = bf16(q), xb = bf16(x), products qb_i xb_i are exact in float32 and accumulated in
    float32, so the bf16 product t (before its final rounding to bf16) obeys
        |t - q.x| <= |qb - q| |xb| + |q| |xb - x| + g |qb| |xb|,   g = D 2^-24 / (1 - D 2^-24),
    the output rounding adds |bf16(t) - t| <= 2^-9 |t|, and the exact path's float32 score S obeys
    |S - q.x| <= g |q| |x|. A key outside the m = k + extra candidates has bf16(t) <= v_m (the m-th bf16 score),
    hence S <= v_m + 2^-9 |v_m| / (1 - 2^-9) + E(q). A query is certified when its candidates' float32 scores
    (computed as the exact path computes them) are strictly decreasing through rank k + 1 and the k-th exceeds
    that bound: the exact path's answer is then unique, whatever its tie-breaking.
    """
    n, m_keys, dim = queries.shape[0], keys.shape[0], keys.shape[1]
    m = min(m_keys, k + extra)
    qb, kb = queries.to(torch.bfloat16), keys.to(torch.bfloat16)
    # Norms and bf16 rounding errors (a float32 minus its bf16 rounding is exact in float32); the float32
    # norms are inflated by far more than their own relative error, D 2^-24.
    def norms(x, xb):
        step = max(1, chunk * chunk // max(1, dim))
        parts = [torch.stack([x[j : j + step].norm(dim=1), xb[j : j + step].float().norm(dim=1),
                              (xb[j : j + step].float() - x[j : j + step]).norm(dim=1)], dim=1)
                 for j in range(0, x.shape[0], step)]
        return torch.cat(parts).double() * (1 + 2 * g + 1e-6)
    g = dim * 2.0**-24 / (1 - dim * 2.0**-24)
    x_norm, xb_norm, dx = norms(keys, kb).max(dim=0).values.tolist()
    q_norm, qb_norm, dq = norms(queries, qb).unbind(1)
    err = (dq * xb_norm + q_norm * dx + g * (qb_norm * xb_norm + q_norm * x_norm)) * (1 + 1e-6) + 1e-12
    # bfloat16 pass: top m candidates per query.
    cand_v = torch.empty([n, m], dtype=torch.bfloat16)
    cand_i = torch.empty([n, m], dtype=torch.int64)
    chunk = max(int(chunk), 1)
    q_step = max(1, min(chunk, n))
    k_step = max(chunk, 2 * chunk * chunk // q_step)
    for q0 in range(0, n, q_step):
        q = qb[q0 : q0 + q_step]
        best_v = best_i = None
        for k0 in range(0, m_keys, k_step):
            v, i = (q @ kb[k0 : k0 + k_step].T).topk(min(m, min(k_step, m_keys - k0)), dim=1)
            i += k0
            if best_v is not None:
                v, i = torch.cat([best_v, v], dim=1), torch.cat([best_i, i], dim=1)
            if v.shape[1] > m:
                v, sel = v.topk(m, dim=1)
                i = i.gather(1, sel)
            best_v, best_i = v, i
        cand_v[q0 : q0 + q_step], cand_i[q0 : q0 + q_step] = best_v, best_i
    v_m = cand_v[:, -1].double()
    bound = v_m + v_m.abs() * (2.0**-9 / (1 - 2.0**-9)) + err
    # Exact float32 rescoring: small blocks of queries against the union of their candidates.
    scores = torch.empty([n, m], dtype=torch.float32)
    rows = 64
    for q0 in range(0, n, rows):
        ci = cand_i[q0 : q0 + rows]
        uniq, inv = ci.unique(return_inverse=True)
        s = queries[q0 : q0 + rows] @ keys[uniq].T
        scores[q0 : q0 + rows] = s.gather(1, inv)
    scores, order = scores.sort(dim=1, descending=True, stable=True)
    idx = cand_i.gather(1, order)
    ok = scores[:, k - 1].double() > bound
    if m > k:
        ok &= (scores[:, : k + 1 - 1] > scores[:, 1 : k + 1]).all(dim=1)
    elif k > 1:
        ok &= (scores[:, : k - 1] > scores[:, 1:k]).all(dim=1)
    out_v, out_i = scores[:, :k].contiguous(), idx[:, :k].contiguous()
    fallback = (~ok).nonzero()[:, 0]
    if len(fallback):
        fv, fi = _chunked_max_topk(queries[fallback], keys, k, chunk, lambda q, b: q @ b.T)
        out_v[fallback], out_i[fallback] = fv, fi
    return out_v, out_i, fallback


def cosine_topk(queries, keys, k=2, chunk=DEFAULT_CHUNK, backend='auto', fast='auto'):
    """Exact k most cosine-similar keys of every query: (similarities [N, k] descending, indices [N, k]).

    fast: True searches with a bfloat16 pass plus exact float32 rescoring (_cosine_topk_bf16), giving the
    same result as the plain float32 path; 'auto' does so on CPUs with native bfloat16 for large problems
    (queries * keys * dim >= BF16_MIN_WORK); False always takes the plain float32 path.
    """
    queries, keys = normalize(queries), normalize(keys)
    _check(queries, keys, k)
    if _use_faiss(backend, keys.shape[0], queries.device):
        faiss = _faiss()
        index = faiss.IndexFlatIP(keys.shape[1])
        index.add(keys.cpu().float().contiguous().numpy())
        v, i = index.search(queries.cpu().float().contiguous().numpy(), min(k, keys.shape[0]))
        return torch.from_numpy(v).to(queries.device).clamp(-1, 1), torch.from_numpy(i).to(queries.device)
    if queries.device.type == 'cpu' and keys.device.type == 'cpu' and _use_bf16(fast, queries, keys, k):
        v, i, _ = _cosine_topk_bf16(queries, keys, k, chunk)
        return v.clamp(-1, 1), i
    v, i = _chunked_max_topk(queries, keys, k, chunk, lambda q, b: q @ b.T)
    return v.clamp(-1, 1), i


def _sort_by_value_then_index(values, indices):
    """Reorder each row by ascending value, ties broken by the lower index, so ties never depend on chunking."""
    indices, order = indices.sort(dim=1, stable=True)
    values = values.gather(1, order)
    values, order = values.sort(dim=1, stable=True)
    return values, indices.gather(1, order)


def l2_topk(queries, keys, k=2, chunk=DEFAULT_CHUNK, backend='auto'):
    """Exact k nearest keys of every query in L2 distance: (distances [N, k] ascending, indices [N, k]).

    The search runs in the queries' dtype: float64 queries make it exact for integer-valued data (pixels).
    Equal distances are listed by key index; when more than k + RERANK_EXTRA keys tie, which of them
    are returned is unspecified.
    """
    queries = torch.as_tensor(queries)
    queries = queries if queries.is_floating_point() else queries.to(torch.float32)
    keys = torch.as_tensor(keys)
    _check(queries, keys, k)
    k = min(k, keys.shape[0])
    # The expanded form below ranks keys with rounding error that grows with |q| |b|; a few extra
    # candidates, re-ranked by directly computed distances, absorb most of it in float32.
    num_candidates = min(keys.shape[0], k + RERANK_EXTRA)
    if _use_faiss(backend, keys.shape[0], queries.device):
        faiss = _faiss()
        index = faiss.IndexFlatL2(keys.shape[1])
        index.add(keys.cpu().float().contiguous().numpy())
        _, i = index.search(queries.cpu().float().contiguous().numpy(), num_candidates)
        i = torch.from_numpy(i).to(queries.device)
    else:
        # Maximising 2<q,b> - |b|^2 ranks keys by distance without forming q - b.
        def score(q, b):
            return 2 * (q @ b.T) - b.square().sum(dim=1)[None, :]
        _, i = _chunked_max_topk(queries, keys, num_candidates, chunk, score)
    # Distances of the candidates computed directly, so that exact copies give exactly 0.
    d = torch.empty(i.shape, dtype=queries.dtype, device=queries.device)
    rows = max(1, max(int(chunk), 1) // num_candidates)
    for q0 in range(0, queries.shape[0], rows):
        sel = i[q0 : q0 + rows]
        chosen = keys[sel.to(keys.device)].to(device=queries.device, dtype=queries.dtype)
        d[q0 : q0 + rows] = (queries[q0 : q0 + rows, None, :] - chosen).norm(dim=2)
    d, i = _sort_by_value_then_index(d, i)
    return d[:, :k], i[:, :k]
