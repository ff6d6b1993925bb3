"""Exact nearest-neighbour search (cosine and L2 top-k) by chunked matrix products."""

import torch

DEFAULT_CHUNK = 4096        # score blocks hold at most chunk x chunk values (64 MiB in float32)
FAISS_MIN_KEYS = 200_000    # below this the chunked torch search is as fast and needs no extra package
RERANK_EXTRA = 8            # extra L2 candidates re-ranked by exact distances


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


def cosine_topk(queries, keys, k=2, chunk=DEFAULT_CHUNK, backend='auto'):
    """Exact k most cosine-similar keys of every query: (similarities [N, k] descending, indices [N, k])."""
    queries, keys = normalize(queries), normalize(keys)
    _check(queries, keys, k)
    if _use_faiss(backend, keys.shape[0], queries.device):
        faiss = _faiss()
        index = faiss.IndexFlatIP(keys.shape[1])
        index.add(keys.cpu().float().contiguous().numpy())
        v, i = index.search(queries.cpu().float().contiguous().numpy(), min(k, keys.shape[0]))
        return torch.from_numpy(v).to(queries.device).clamp(-1, 1), torch.from_numpy(i).to(queries.device)
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
