"""The Triton MoE kernels (compass_nbdev.kernels) against the PyTorch reference (compass_nbdev.moe).

Without a GPU the kernels run in Triton's interpreter: TRITON_INTERPRET must be set before the kernels are
decorated, so tests/conftest.py sets it before any test file is collected; this file skips itself when the kernels
were decorated without it. Every output buffer is filled with NaN (ints with -777) before each launch
(kernels.POISON), so an element a kernel fails to write shows up as an error. Sizes are small so the file runs in
a few minutes on 2 CPU cores; the larger case runs only with COMPASS_SLOW=1.
"""

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from compass_nbdev import kernels, moe  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
if DEV == "cpu" and not kernels.INTERPRET:  # e.g. TRITON_INTERPRET=0 set by hand: the kernels cannot launch on a CPU
    pytest.skip("compass_nbdev.kernels was imported without TRITON_INTERPRET=1 (tests/conftest.py sets it)",
                allow_module_level=True)

# per-dtype tolerances on ||a - b|| / ||b|| against the fp32 reference (fp32 on a GPU uses tf32 in tl.dot)
TOL = {torch.float32: 1e-5 if DEV == "cpu" else 5e-3, torch.float16: 5e-3}
slow = pytest.mark.skipif(not os.environ.get("COMPASS_SLOW"), reason="slow: set COMPASS_SLOW=1")


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    monkeypatch.setattr(kernels, "POISON", True)


def rel_err(a, b):
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all(), "non-finite values: an element was left unwritten"
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_ids(T, E, k, mode, g):
    if mode == "random":  # k distinct experts per token
        return torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)])
    if mode == "one":  # every token to the same expert (k = 1)
        return torch.full((T, k), E // 2, dtype=torch.int64)
    if mode == "two":  # only experts 3 and 7 of 13 are used: the rest are empty
        return torch.stack([torch.tensor([3, 7])[torch.randperm(2, generator=g)[:k]] for _ in range(T)])
    raise ValueError(mode)


def make_problem(T, H, E, k, Fd, dtype, mode="random", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H, generator=g)
    ids = make_ids(T, E, k, mode, g)
    w = torch.rand(T, k, generator=g) + 0.1
    wgu = torch.randn(E, H, 2 * Fd, generator=g) / H**0.5
    wd = torch.randn(E, Fd, H, generator=g) / Fd**0.5
    gout = torch.randn(T, H, generator=g)
    return (x.to(dtype), ids, w, wgu.to(dtype), wd.to(dtype)), gout.to(dtype)


def check_experts(T, H, E, k, Fd, dtype, mode="random", seed=0):
    (x, ids, w, wgu, wd), gout = make_problem(T, H, E, k, Fd, dtype, mode, seed)
    # reference: fp32 autograd through moe.experts_grouped on the same (rounded) inputs
    ref_leaves = [t.float().requires_grad_() for t in (x, w, wgu, wd)]
    ref = moe.experts_grouped(ref_leaves[0], ids, *ref_leaves[1:])
    ref_grads = torch.autograd.grad(ref, ref_leaves, gout.float())
    leaves = [t.to(DEV).requires_grad_() for t in (x, w, wgu, wd)]
    out = kernels.triton_experts(leaves[0], ids.to(DEV), *leaves[1:])
    assert out.dtype == dtype and out.shape == (T, H)
    grads = torch.autograd.grad(out, leaves, gout.to(DEV))
    tol = TOL[dtype]
    errs = {name: rel_err(a.cpu(), b) for name, a, b in
            zip(["out", "x", "weights", "w_gate_up", "w_down"], [out, *grads], [ref, *ref_grads])}
    assert max(errs.values()) < tol, errs


# ---------------------------------------------------------------- permutation


@pytest.mark.parametrize("T,E,k,mode,block_m", [
    (1, 1, 1, "random", 32), (7, 13, 4, "random", 2), (300, 4, 2, "random", 32),
    (300, 4, 1, "one", 32), (40, 13, 2, "two", 8), (70, 13, 4, "random", 16),
])  # fmt: skip
def test_plan_is_a_stable_counting_sort(T, E, k, mode, block_m):
    ids = make_ids(T, E, k, mode, torch.Generator().manual_seed(T + E))
    plan = kernels.moe_plan(ids.to(DEV), E, block_m)
    flat = ids.reshape(-1)
    assert plan.row_slot.cpu().tolist() == torch.argsort(flat, stable=True).tolist()
    assert plan.row_token.cpu().tolist() == (plan.row_slot.cpu() // k).tolist()
    counts = torch.bincount(flat, minlength=E)
    assert plan.offsets.cpu().tolist() == [0] + counts.cumsum(0).tolist()
    # the tile schedule: ceil(count / block_m) tiles per expert, in order, then -1 up to the static bound
    want_e, want_r = [], []
    for e in range(E):
        for i in range(-(-int(counts[e]) // block_m)):
            want_e.append(e)
            want_r.append(int(plan.offsets[e]) + i * block_m)
    n = len(want_e)
    assert len(plan.tile_expert) == T * k // block_m + E >= n
    assert plan.tile_expert.cpu().tolist() == want_e + [-1] * (len(plan.tile_expert) - n)
    assert plan.tile_row.cpu()[:n].tolist() == want_r


# ---------------------------------------------------------------- routing


@pytest.mark.parametrize("T,E,k,use_bias,renorm,dtype", [
    (1, 1, 1, False, True, torch.float32), (1, 13, 4, True, True, torch.float32),
    (7, 4, 2, False, False, torch.float32), (7, 13, 1, True, False, torch.float16),
    (300, 4, 4, True, True, torch.float32), (300, 13, 2, False, True, torch.float16),
    (300, 13, 4, True, False, torch.float32), (7, 64, 4, True, True, torch.float32),
])  # fmt: skip
def test_route_matches_reference(T, E, k, use_bias, renorm, dtype):
    g = torch.Generator().manual_seed(E * 1000 + T)
    logits = (torch.randn(T, E, generator=g) * 2).to(dtype)  # random: no ties
    bias = torch.randn(E, generator=g) * 0.05 if use_bias else None
    r1, r2 = torch.randn(T, k, generator=g), torch.randn(T, E, generator=g)

    lr = logits.clone().requires_grad_()
    rw, rids, rp = moe.route(lr, k, bias, renorm)
    (rgl,) = torch.autograd.grad((rw * r1).sum() + (rp * r2).sum(), lr)

    lt = logits.to(DEV).requires_grad_()
    w, ids, p = kernels.triton_route(lt, k, None if bias is None else bias.to(DEV), renorm)
    assert ids.dtype == torch.int64 and w.dtype == torch.float32 and p.dtype == torch.float32
    assert torch.equal(ids.cpu(), rids)
    assert rel_err(w.cpu(), rw) < 1e-5 and rel_err(p.cpu(), rp) < 1e-5
    (gl,) = torch.autograd.grad((w * r1.to(DEV)).sum() + (p * r2.to(DEV)).sum(), lt)
    assert gl.dtype == dtype
    assert rel_err(gl.cpu(), rgl) < (1e-5 if dtype == torch.float32 else 2e-3)


def test_route_ties_go_to_the_lowest_index():
    w, ids, p = kernels.triton_route(torch.zeros(3, 6, device=DEV), 4)
    assert ids.cpu().tolist() == [[0, 1, 2, 3]] * 3
    assert torch.allclose(w.cpu(), torch.full((3, 4), 0.25))


def test_route_bias_changes_the_choice_not_the_weights():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]], device=DEV)
    bias = torch.tensor([0.0, 0.0, 0.0, 1.0], device=DEV)
    w, ids, p = kernels.triton_route(logits, 1, bias, renormalize=False)
    assert ids.item() == 3 and abs(w.item() - p[0, 3].item()) < 1e-7


def test_route_rejects_bad_k():
    with pytest.raises(ValueError, match="k=5"):
        kernels.triton_route(torch.randn(2, 4, device=DEV), 5)


# ---------------------------------------------------------------- the expert layer


@pytest.mark.parametrize("T,H,E,k,Fd,dtype,mode", [
    (1, 96, 1, 1, 32, torch.float32, "random"),      # one token, one expert
    (7, 100, 13, 4, 40, torch.float32, "random"),    # H not a power of 2; most experts empty
    (7, 96, 4, 4, 48, torch.float16, "random"),      # every token to every expert
    (300, 96, 4, 2, 32, torch.float32, "random"),    # several row-tiles per expert
    (300, 100, 13, 1, 24, torch.float16, "random"),
    (300, 96, 4, 1, 32, torch.float32, "one"),       # every token to one expert: 10 tiles of one segment
    (40, 100, 13, 2, 32, torch.float16, "two"),      # 11 of 13 experts empty
    (40, 128, 4, 2, 64, torch.float16, "random"),    # K and N multiples of the blocks: the unmasked (EVEN_K/N) loads
    (70, 128, 13, 4, 40, torch.float32, "random"),   # EVEN_K without EVEN_N
])  # fmt: skip
def test_experts_forward_and_every_gradient(T, H, E, k, Fd, dtype, mode):
    check_experts(T, H, E, k, Fd, dtype, mode)


@slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_experts_larger(dtype):
    check_experts(1024, 256, 16, 4, 128, dtype, seed=1)


def test_experts_inference_skips_saving():
    (x, ids, w, wgu, wd), _ = make_problem(7, 96, 4, 2, 32, torch.float32)
    with torch.no_grad():
        out = kernels.triton_experts(x.to(DEV), ids.to(DEV), w.to(DEV), wgu.to(DEV), wd.to(DEV))
    assert rel_err(out.cpu(), moe.experts_grouped(x, ids, w, wgu, wd)) < TOL[torch.float32]


def test_experts_zero_tokens_and_bad_shapes():
    (x, ids, w, wgu, wd), _ = make_problem(7, 96, 4, 2, 32, torch.float32)
    out = kernels.triton_experts(x[:0].to(DEV), ids[:0].to(DEV), w[:0].to(DEV), wgu.to(DEV), wd.to(DEV))
    assert out.shape == (0, 96)
    with pytest.raises(ValueError, match="do not fit"):
        kernels.triton_experts(x.to(DEV), ids.to(DEV), w.to(DEV), wgu.to(DEV), wd[:, :5].to(DEV))


def test_experts_weights_in_another_dtype():
    "fp16 activations with fp32 expert weights (autocast-style): output in fp16, weight grads in fp32."
    (x, ids, w, wgu, wd), gout = make_problem(7, 96, 4, 2, 32, torch.float32, seed=2)
    leaves = [x.half().to(DEV).requires_grad_(), wgu.to(DEV).requires_grad_(), wd.to(DEV).requires_grad_()]
    out = kernels.triton_experts(leaves[0], ids.to(DEV), w.to(DEV), leaves[1], leaves[2])
    assert out.dtype == torch.float16
    grads = torch.autograd.grad(out, leaves, gout.half().to(DEV))
    assert [g.dtype for g in grads] == [torch.float16, torch.float32, torch.float32]
    ref_leaves = [x.half().float().requires_grad_(), wgu.half().float().requires_grad_(), wd.half().float().requires_grad_()]
    ref = moe.experts_grouped(ref_leaves[0], ids, w, *ref_leaves[1:])
    ref_grads = torch.autograd.grad(ref, ref_leaves, gout.half().float())
    for a, b in zip([out, *grads], [ref, *ref_grads]):
        assert rel_err(a.cpu(), b) < TOL[torch.float16]


def test_experts_under_autocast_run_in_the_autocast_dtype():
    "fp32 residual stream under autocast: the experts compute in the autocast dtype, and gradients reach fp32 leaves."
    (x, ids, w, wgu, wd), gout = make_problem(7, 96, 4, 2, 32, torch.float32, seed=3)
    leaves = [t.to(DEV).requires_grad_() for t in (x, wgu, wd)]
    dev = "cuda" if DEV == "cuda" else "cpu"
    with torch.autocast(dev, dtype=torch.float16):
        out = kernels.triton_experts(leaves[0], ids.to(DEV), w.to(DEV), leaves[1], leaves[2])
    assert out.dtype == torch.float16
    grads = torch.autograd.grad(out, leaves, gout.half().to(DEV))
    assert [g.dtype for g in grads] == [torch.float32] * 3
    ref_leaves = [t.half().float().requires_grad_() for t in (x, wgu, wd)]
    ref = moe.experts_grouped(ref_leaves[0], ids, w, *ref_leaves[1:])
    ref_grads = torch.autograd.grad(ref, ref_leaves, gout.half().float())
    for a, b in zip([out, *grads], [ref, *ref_grads]):
        assert rel_err(a.cpu(), b) < TOL[torch.float16]

def test_registered_as_triton():
    from compass_nbdev.ops import get_op
    assert get_op("experts", "cuda", {"experts": "triton"}) is kernels.triton_experts
    assert get_op("route", "cuda", {"route": "triton"}) is kernels.triton_route
    assert get_op("experts", "cuda") is kernels.triton_experts and get_op("route", "cuda") is kernels.triton_route
    assert get_op("experts", "cpu") is moe.experts_grouped and get_op("route", "cpu") is moe.route   # never the interpreter


def test_compass_moe_layer_with_triton_impl():
    "The model's MoE module selects the kernels by name and gets the reference's output and gradients."
    torch.manual_seed(0)
    ref_layer = moe.CompassMoE(96, 32, n_experts=6, k=2, n_shared=1, impl="grouped")
    tri_layer = moe.CompassMoE(96, 32, n_experts=6, k=2, n_shared=1, impl="triton").to(DEV)
    tri_layer.load_state_dict(ref_layer.state_dict())
    x = torch.randn(2, 5, 96)
    outs, grads = [], []
    for layer, dev in ((ref_layer, "cpu"), (tri_layer, DEV)):
        out, aux = layer(x.to(dev))
        out.square().sum().backward()
        outs.append(out.detach().cpu())
        grads.append([p.grad.cpu() for p in layer.parameters()])
    assert rel_err(outs[1], outs[0]) < TOL[torch.float32]
    for a, b in zip(grads[1], grads[0]):
        assert rel_err(a, b) < TOL[torch.float32]


def test_cpu_without_interpreter_uses_the_reference(monkeypatch):
    monkeypatch.setattr(kernels, "INTERPRET", False)
    calls = []
    monkeypatch.setattr(moe, "experts_grouped", lambda *a: calls.append("experts") or a[0])
    monkeypatch.setattr(moe, "route", lambda *a: calls.append("route"))
    x = torch.randn(3, 8)
    kernels.triton_experts(x, torch.zeros(3, 1, dtype=torch.long), torch.ones(3, 1), torch.randn(2, 8, 4), torch.randn(2, 2, 8))
    kernels.triton_route(x, 2)
    assert calls == ["experts", "route"]


def test_torch_compile_traces_the_layer():
    (x, ids, w, wgu, wd), _ = make_problem(7, 96, 5, 2, 32, torch.float32, seed=3)
    logits = torch.randn(7, 5)

    def loss(route, experts, lg, x, wgu, wd):
        w, ids, p = route(lg, 2)
        return experts(x, ids, w, wgu, wd).square().sum() + 3 * p.square().sum()

    ref_leaves = [t.clone().requires_grad_() for t in (logits, x, wgu, wd)]
    ref = loss(moe.route, moe.experts_grouped, *ref_leaves)
    ref_grads = torch.autograd.grad(ref, ref_leaves)
    fn = torch.compile(lambda *a: loss(kernels.triton_route, kernels.triton_experts, *a), backend="aot_eager", fullgraph=True)
    leaves = [t.to(DEV).requires_grad_() for t in (logits, x, wgu, wd)]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves)
    assert rel_err(out.detach().cpu(), ref.detach()) < 1e-5
    for a, b in zip(grads, ref_grads):
        assert rel_err(a.cpu(), b) < TOL[torch.float32]


def test_import_without_triton_falls_back_to_the_reference():
    code = ("import sys; sys.modules['triton'] = None; import torch; from compass_nbdev import kernels as K, moe; "
            "assert not K.HAS_TRITON; x = torch.randn(5, 8); ids = torch.randint(0, 3, (5, 2)); w = torch.rand(5, 2); "
            "a, b = torch.randn(3, 8, 8), torch.randn(3, 4, 8); "
            "assert torch.allclose(K.triton_experts(x, ids, w, a, b), moe.experts_grouped(x, ids, w, a, b)); print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_import_needs_no_gpu_and_no_interpreter():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import torch, compass_nbdev.kernels as K; "
            "assert not K.INTERPRET and not K.use_triton(torch.zeros(1)); print('ok')")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
