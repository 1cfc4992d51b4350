"Readable vs efficient MoE: outputs and every gradient, on random inputs and awkward sizes."
import math, pytest, torch
import torch.nn.functional as F
from compass_nbdev.core import ConfigError
from compass_nbdev.moe import route, experts_loop, experts_grouped, apply_capacity, CompassMoE
from compass_nbdev.ops import get_op, register_op, OPS, use_ops

TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 3e-2}

def _make(T, H, Fd, E, k, dtype, seed, ids=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H, generator=g).to(dtype)
    wgu = (torch.randn(E, H, 2 * Fd, generator=g) / math.sqrt(H)).to(dtype)
    wd = (torch.randn(E, Fd, H, generator=g) / math.sqrt(Fd)).to(dtype)
    w, rid, _ = route(torch.randn(T, E, generator=g), k)
    if ids is None: ids = rid
    gout = torch.randn(T, H, generator=g).to(dtype)
    return x, ids, w, wgu, wd, gout

def _run(fn, x, ids, w, wgu, wd, gout):
    ins = [t.detach().clone().requires_grad_() for t in (x, w, wgu, wd)]
    out = fn(ins[0], ids, ins[1], ins[2], ins[3])
    out.backward(gout)
    return [out.detach()] + [t.grad for t in ins]

def _check(args, dtype):
    ref, fast = _run(experts_loop, *args), _run(experts_grouped, *args)
    for name, r, f in zip(['out', 'dx', 'dweights', 'dw_gate_up', 'dw_down'], ref, fast):
        assert f.dtype == r.dtype and f.shape == r.shape, name
        scale = r.float().abs().max().clamp(min=1)
        err = (r.float() - f.float()).abs().max() / scale
        assert err <= TOL[dtype], f"{name}: rel err {err} > {TOL[dtype]}"

@pytest.mark.parametrize('dtype', [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize('T,H,Fd,E,k', [(1, 8, 4, 4, 2), (7, 10, 6, 9, 3), (100, 24, 20, 6, 4), (33, 16, 12, 16, 1), (64, 32, 48, 8, 8)])
def test_grouped_matches_loop(T, H, Fd, E, k, dtype):
    for seed in range(2): _check(_make(T, H, Fd, E, k, dtype, seed), dtype)

@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_all_tokens_one_expert_and_empty_experts(dtype):
    T, H, Fd, E = 20, 12, 8, 6
    ids = torch.tensor([[3]] * T)                               # every token to expert 3; five experts empty
    x, _, w, wgu, wd, gout = _make(T, H, Fd, E, 1, dtype, 5, ids=ids)
    _check((x, ids, w[:, :1], wgu, wd, gout), dtype)
    ref = _run(experts_grouped, x, ids, w[:, :1], wgu, wd, gout)
    assert ref[3][[0, 1, 2, 4, 5]].abs().max() == 0 and ref[3][3].abs().max() > 0
    ids2 = torch.stack([torch.full((T,), 0), torch.full((T,), 5)], 1)   # k=2, only experts 0 and 5 used
    x, _, w, wgu, wd, gout = _make(T, H, Fd, E, 2, dtype, 6, ids=ids2)
    _check((x, ids2, w, wgu, wd, gout), dtype)

def test_zero_tokens():
    x, ids, w, wgu, wd, _ = _make(3, 8, 4, 4, 2, torch.float32, 0)
    out = experts_grouped(x[:0], ids[:0], w[:0], wgu, wd)
    assert out.shape == (0, 8)

def test_gradcheck_grouped():
    x, ids, w, wgu, wd, _ = _make(5, 6, 4, 5, 2, torch.float64, 1)
    ins = [t.clone().requires_grad_() for t in (x, w.double(), wgu, wd)]
    assert torch.autograd.gradcheck(lambda a, b, c, d: experts_grouped(a, ids, b, c, d), ins)

def test_explicit_formula():
    x, ids, w, wgu, wd, _ = _make(4, 6, 5, 3, 2, torch.float64, 2)
    Fd = wd.shape[1]
    out = experts_grouped(x, ids, w, wgu, wd)
    for t in range(4):
        ref = sum(w[t, j].double() * (F.silu(x[t] @ wgu[ids[t, j], :, :Fd]) * (x[t] @ wgu[ids[t, j], :, Fd:])) @ wd[ids[t, j]]
                  for j in range(2))
        torch.testing.assert_close(out[t], ref)

def test_route_contract():
    logits = torch.randn(10, 6, dtype=torch.bfloat16)
    w, ids, p = route(logits, 3)
    assert w.dtype == torch.float32 and ids.dtype == torch.int64 and p.dtype == torch.float32
    assert w.shape == ids.shape == (10, 3) and p.shape == (10, 6)
    torch.testing.assert_close(w.sum(-1), torch.ones(10))
    bias = torch.zeros(6); bias[5] = 10.
    w2, ids2, p2 = route(logits, 3, bias=bias, renormalize=False)
    assert (ids2 == 5).any(-1).all()                            # the bias forces expert 5 into every top-3 ...
    torch.testing.assert_close(w2, p2.gather(-1, ids2))         # ... but the weights are the unbiased probabilities

def test_registry():
    assert get_op('experts', 'cpu') is experts_grouped
    assert get_op('experts', 'cpu', 'reference') is experts_loop and get_op('route', 'cpu', 'reference') is route
    with pytest.raises(ConfigError, match="ops.experts: 'nope' is not an implementation of experts; allowed: auto, reference, .*grouped.*loop"):
        get_op('experts', 'cpu', {'experts': 'nope'})
    calls = []
    @register_op('experts', '_test_impl', devices=('cpu',), priority=99)
    def f(*a): calls.append(1); return experts_loop(*a)
    try:
        assert get_op('experts', 'cpu') is f                          # the highest priority wins `auto`
        moe = CompassMoE(8, 4, n_experts=4, k=2); moe(torch.randn(3, 8))
        assert calls == [1]
        moe.impl = 'grouped'; moe(torch.randn(3, 8)); assert calls == [1]   # a name beats `auto`
        with use_ops('reference'): moe(torch.randn(3, 8))            # and `use_ops` beats a name
        assert calls == [1]
    finally:
        del OPS['experts']['_test_impl']; get_op.__globals__['_cache'].clear()

def test_capacity_drops():
    ids = torch.tensor([[0, 1], [0, 2], [0, 3], [1, 0]])
    w, keep = apply_capacity(ids, torch.ones(4, 2), 4, capacity_factor=1.0)   # capacity 2 per expert
    # expert 0 gets first choices of tokens 0,1 (kept), 2 (dropped), then token 3's second choice (dropped)
    assert keep.tolist() == [[True, True], [True, True], [False, True], [True, False]]
    assert (w == keep.float()).all()

def test_moe_module_impls_agree_and_shared():
    torch.manual_seed(0)
    m = CompassMoE(16, 8, n_experts=5, k=2, n_shared=2)
    x = torch.randn(2, 7, 16)
    outs = {}
    for impl in ('loop', 'grouped'):
        m.impl = impl; m.zero_grad()
        y, aux = m(x); y.square().sum().backward()
        outs[impl] = [y.detach()] + [p.grad.clone() for p in m.parameters()]
    for a, b in zip(outs['loop'], outs['grouped']): torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert aux['counts'].sum() == 2 * 7 * 2 and m.shared.down.in_features == 16
    with pytest.raises(ConfigError, match='num_experts_per_tok'): CompassMoE(16, 8, n_experts=3, k=4)

# --- the CPU fast path (issue #4 rerun): inverse-permutation gathers and F.grouped_mm ---
from compass_nbdev.moe import _sort_by_expert, _unsort_sum, _gmm, _gmm_wgrad, _grouped_mm_ok

@pytest.mark.parametrize('T,E,k', [(1, 4, 2), (13, 7, 3), (64, 32, 4)])
def test_sort_inverse_permutation(T, E, k):
    ids = torch.stack([torch.randperm(E, generator=torch.Generator().manual_seed(t))[:k] for t in range(T)])
    order, inv, tok, counts = _sort_by_expert(ids, E)
    flat = ids.reshape(-1)
    assert torch.equal(order[inv], torch.arange(T * k)) and torch.equal(inv[order], torch.arange(T * k))
    assert (flat[order].diff() >= 0).all() and counts == torch.bincount(flat, minlength=E).tolist()
    assert torch.equal(tok, order // k)
    ys = torch.randn(T * k, 5, dtype=torch.float64)
    ref = torch.zeros(T, 5, dtype=torch.float64).index_add_(0, tok, ys)      # the scatter it replaces
    torch.testing.assert_close(_unsort_sum(ys, inv, k), ref)

@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize('K,N', [(32, 48), (10, 6), (8, 16)])
def test_gmm_paths_match_per_group_mm(dtype, K, N):
    g = torch.Generator().manual_seed(K * N)
    counts = [3, 0, 5, 1, 0]                                   # empty groups in the middle and at the end
    a, gr = torch.randn(9, K, generator=g).to(dtype), torch.randn(9, N, generator=g).to(dtype)
    b = torch.randn(5, K, N, generator=g).to(dtype)
    ends = torch.tensor(counts).cumsum(0).tolist(); starts = [e - c for e, c in zip(ends, counts)]
    ref = torch.cat([a[s:e] @ b[i] for i, (s, e) in enumerate(zip(starts, ends)) if e > s])
    refw = torch.stack([a[s:e].t() @ gr[s:e] for s, e in zip(starts, ends)])
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(_gmm(a, b, counts), ref, **tol)
    torch.testing.assert_close(_gmm(a, b.transpose(1, 2).contiguous(), counts, trans_b=True), ref, **tol)
    w = _gmm_wgrad(a, gr, counts, 5)
    torch.testing.assert_close(w, refw, **tol)
    assert w[1].abs().max() == 0 and w[4].abs().max() == 0   # no rows, zero gradient (never uninitialised memory)

def test_grouped_mm_ok_rules():
    assert _grouped_mm_ok(torch.randn(4, 8), torch.randn(2, 8, 4)) == hasattr(F, 'grouped_mm')
    assert not _grouped_mm_ok(torch.randn(4, 10))              # 40-byte rows: not 16-byte aligned
    assert not _grouped_mm_ok(torch.randn(4, 8, dtype=torch.float64))

def test_grouped_is_deterministic():
    x, ids, w, wgu, wd, gout = _make(50, 16, 8, 6, 3, torch.float32, 7)
    a, b = _run(experts_grouped, x, ids, w, wgu, wd, gout), _run(experts_grouped, x, ids, w, wgu, wd, gout)
    for p, q in zip(a, b): assert torch.equal(p, q)
