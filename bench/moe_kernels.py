"""GPU benchmark of the Triton MoE kernels (compass_nbdev.kernels): correctness first, then speed.

On a CUDA device:
1. correctness: bf16 kernels against the fp32 reference (compass_nbdev.moe) on the benchmark shapes with 4096
   tokens: output and every gradient (x, routing weights, w_gate_up, w_down) must have ||a-b||/||b|| < 1e-2, and
   the routing kernel must pick the reference's experts (>= 99.9% of ids: near-ties may flip in the last bit);
2. speed: forward and forward+backward for 16k tokens at
   - compass: hidden 2048, 64 routed experts (FFN 1408) top-4 + 2 shared experts. The shared experts are folded in
     as 2 more experts that every token picks with weight 1, so every implementation does the same work
     (66 experts, 6 per token);
   - fewer-larger: hidden 2048, 16 experts (FFN 5632) top-4;
   against a dense cuBLAS GEMM doing the same FLOPs (the ceiling: the same matmul shapes with one expert),
   transformers' `grouped_mm` experts path (torch._grouped_mm) and transformers' eager per-expert loop
   (Qwen2MoeExperts). Timings are medians of triton.testing.do_bench (CUDA events, L2 flushed between runs).
It prints one markdown table (ms, TFLOP/s, % of dense, speedups of the kernels over each) and ends with
    moe_kernels gpu=<name> pct_of_dense=<x> vs_grouped_mm=<x> vs_eager=<x> max_rel_err=<x>
for the compass shape (forward+backward). It exits 1 if a correctness check fails.

Without CUDA it says so and exits 2 at once. `--smoke` instead runs the same code tiny, on the CPU, with the
kernels in Triton's interpreter (fp32, wall-clock timer): a check that the script works, not a measurement.

    python bench/moe_kernels.py [--smoke] [--tokens 16384] [--out DIR]
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--smoke", action="store_true", help="no GPU: run tiny shapes on the CPU in the Triton interpreter")
p.add_argument("--tokens", type=int, default=16384, help="tokens for the timings")
p.add_argument("--check-tokens", type=int, default=4096,
               help="tokens for the correctness check (enough rows per expert for the same GEMM tiles as the timings)")
p.add_argument("--own-baselines", action="store_true", help="use this script's grouped_mm / loop baselines, not transformers'")
p.add_argument("--out", default=os.environ.get("OUT"), help="folder for results.json and table.md")
args = p.parse_args()

CUDA = torch.cuda.is_available()
if not CUDA and not args.smoke:
    print("moe_kernels: no CUDA device: nothing measured. This benchmark needs a GPU "
          "(run with --smoke for a tiny CPU check of the script in Triton's interpreter).", file=sys.stderr)
    sys.exit(2)
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are decorated

import triton  # noqa: E402
from compass_nbdev import kernels, moe  # noqa: E402
from compass_nbdev.core import bench_line, median_ms, time_calls, write_record  # noqa: E402

DEV = "cuda" if CUDA else "cpu"
DT = torch.bfloat16 if CUDA else torch.float32
T0 = time.time()

# name: (hidden, routed experts, ffn, top-k, shared experts)
SHAPES = {"compass": (2048, 64, 1408, 4, 2), "fewer-larger": (2048, 16, 5632, 4, 0)}
if args.smoke:
    SHAPES = {"compass": (96, 6, 32, 2, 2), "fewer-larger": (96, 3, 64, 2, 0)}
    args.tokens, args.check_tokens = 64, 32


def make_inputs(T, H, E, Fd, k, n_shared, dtype, seed=0):
    "Random tokens, routing from random logits through the Triton router, shared experts folded in, weights."
    g = torch.Generator(device=DEV).manual_seed(seed)
    x = torch.randn(T, H, device=DEV, generator=g).to(dtype)
    logits = torch.randn(T, E, device=DEV, generator=g)
    w, ids, _ = kernels.triton_route(logits, k)
    if n_shared:
        shared = torch.arange(E, E + n_shared, device=DEV).expand(T, n_shared)
        ids = torch.cat([ids, shared], 1).contiguous()
        w = torch.cat([w, torch.ones(T, n_shared, device=DEV)], 1).contiguous()
    Et = E + n_shared
    wgu = (torch.randn(Et, H, 2 * Fd, device=DEV, generator=g) / H**0.5).to(dtype)
    wd = (torch.randn(Et, Fd, H, device=DEV, generator=g) / Fd**0.5).to(dtype)
    return x, ids, w, wgu, wd


def rel(a, b):
    a, b = a.double(), b.double()
    return float("inf") if not torch.isfinite(a).all() else ((a - b).norm() / b.norm()).item()


def check(name, T, H, E, Fd, k, n_shared):
    "bf16 kernels vs the fp32 reference: output and every gradient; the router vs moe.route."
    x, ids, w, wgu, wd = make_inputs(T, H, E, Fd, k, n_shared, DT, seed=1)
    g = torch.randn(T, H, device=DEV).to(DT)
    ref_leaves = [t.float().requires_grad_() for t in (x, w, wgu, wd)]
    ref = moe.experts_grouped(ref_leaves[0], ids, *ref_leaves[1:])
    ref_grads = torch.autograd.grad(ref, ref_leaves, g.float())
    leaves = [t.clone().requires_grad_() for t in (x, w, wgu, wd)]
    out = kernels.triton_experts(leaves[0], ids, *leaves[1:])
    grads = torch.autograd.grad(out, leaves, g)
    errs = {n: rel(a, b) for n, a, b in zip(["out", "dx", "dweights", "dw_gate_up", "dw_down"], [out, *grads], [ref, *ref_grads])}
    logits = torch.randn(T, E, device=DEV)
    rw, rids, rp = moe.route(logits, k)
    tw, tids, tp = kernels.triton_route(logits, k)
    errs["route_w"] = rel(tw, rw)
    errs["route_ids_agree"] = (tids == rids).float().mean().item()
    print(f"check {name}: " + " ".join(f"{n}={v:.2e}" for n, v in errs.items()), flush=True)
    # ids may differ only where two probabilities tie to within fp32 rounding (exp differs in the last bit)
    ok = all(v < 1e-2 for n, v in errs.items() if n != "route_ids_agree") and errs["route_ids_agree"] >= 0.999
    return ok, max(v for n, v in errs.items() if n != "route_ids_agree")


def bench(fn):
    "Median ms of `fn`: CUDA events with the L2 cache flushed (triton's do_bench) on a GPU; the package's timer on the CPU."
    if CUDA:
        return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
    return median_ms(time_calls({"fn": fn}, rounds=3, settle=True)["fn"]["wall"])


class OwnExperts(torch.nn.Module):
    "Fallback baselines in transformers' layout ((E, 2F, H), (E, H, F)): torch._grouped_mm, or moe.experts_loop."
    def __init__(self, Et, H, Fd, impl):
        super().__init__()
        self.impl, self.Fd = impl, Fd
        self.gate_up_proj = torch.nn.Parameter(torch.empty(Et, 2 * Fd, H))
        self.down_proj = torch.nn.Parameter(torch.empty(Et, H, Fd))

    def forward(self, x, ids, w):
        wgu, wd = self.gate_up_proj.transpose(1, 2), self.down_proj.transpose(1, 2)  # (E, H, 2F), (E, F, H)
        if self.impl == "eager":
            return moe.experts_loop(x, ids, w, wgu, wd)
        flat = ids.reshape(-1)
        order = torch.argsort(flat, stable=True)
        tok = order // ids.shape[1]
        offs = torch.histc(flat.float(), bins=wgu.shape[0], min=0, max=wgu.shape[0] - 1).cumsum(0).to(torch.int32)
        gu = torch._grouped_mm(x[tok], wgu, offs=offs)
        h = torch.nn.functional.silu(gu[:, :self.Fd]) * gu[:, self.Fd:]
        y = torch._grouped_mm(h, wd, offs=offs) * w.reshape(-1)[order, None].to(x.dtype)
        return torch.zeros_like(x).index_add(0, tok, y)


def baseline_experts(H, Et, Fd, wgu, wd, impl):
    "transformers' Qwen2MoeExperts ('grouped_mm' or 'eager') holding the same weights; OwnExperts if unavailable."
    try:
        if args.own_baselines: raise RuntimeError("--own-baselines")
        from transformers import Qwen2MoeConfig
        from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeExperts
        cfg = Qwen2MoeConfig(hidden_size=H, moe_intermediate_size=Fd, num_experts=Et, hidden_act="silu")
        cfg._experts_implementation = impl
        m = Qwen2MoeExperts(cfg)
        label = f"transformers {impl}"
    except Exception as e:
        print(f"  transformers' {impl} experts unavailable ({type(e).__name__}: {e}); using this script's own", flush=True)
        m, label = OwnExperts(Et, H, Fd, impl), f"own {impl}"
    m = m.to(device=DEV, dtype=wgu.dtype)
    with torch.no_grad():
        m.gate_up_proj.copy_(wgu.transpose(1, 2))
        m.down_proj.copy_(wd.transpose(1, 2))
    m.label = label
    return m


def time_shape(name, T, H, E, Fd, k, n_shared):
    x, ids, w, wgu, wd = make_inputs(T, H, E, Fd, k, n_shared, DT)
    Et, S = E + n_shared, ids.numel()
    g = torch.randn(T, H, device=DEV).to(DT)
    flops_fwd = 6 * S * H * Fd  # gate|up: 2*S*H*2F, down: 2*S*F*H
    impls = {"triton": lambda x, w, wgu, wd, m: kernels.triton_experts(x, ids, w, wgu, wd)}
    for impl in ("grouped_mm", "eager"):
        impls[impl] = lambda x, w, wgu, wd, m: m(x, ids, w.to(x.dtype))
    mods = {impl: baseline_experts(H, Et, Fd, wgu, wd, impl) for impl in ("grouped_mm", "eager")}
    with torch.no_grad():  # every implementation must compute the same function before its time means anything
        ref = impls["triton"](x, w, wgu, wd, None)
        for impl in ("grouped_mm", "eager"):
            err = rel(impls[impl](x, w, wgu, wd, mods[impl]), ref)
            print(f"  {name} {impl} ({mods[impl].label}) vs triton output: rel err {err:.2e}", flush=True)
            if not err < 2e-2:
                raise SystemExit(f"moe_kernels: {impl} disagrees with the kernels on {name} (rel err {err:.2e})")
    rows = []
    # the ceiling: the same matmul shapes as dense cuBLAS GEMMs (forward: 2, backward: 4 more)
    xs, h0 = torch.randn(S, H, device=DEV).to(DT), torch.randn(S, Fd, device=DEV).to(DT)
    w1, w2 = torch.randn(H, 2 * Fd, device=DEV).to(DT), torch.randn(Fd, H, device=DEV).to(DT)
    ga, gy = torch.randn(S, 2 * Fd, device=DEV).to(DT), torch.randn(S, H, device=DEV).to(DT)
    dense_f = lambda: (xs @ w1, h0 @ w2)
    dense_fb = lambda: (xs @ w1, h0 @ w2, ga @ w1.T, xs.T @ ga, gy @ w2.T, h0.T @ gy)
    rows.append(dict(shape=name, impl="dense", label="dense cuBLAS GEMMs (ceiling)", fwd=bench(dense_f), fwdbwd=bench(dense_fb)))
    for impl, f in impls.items():
        m = mods.get(impl)
        leaves = [t.clone().requires_grad_() for t in ((x, w, wgu, wd) if m is None else (x, w))]
        ws = (wgu, wd) if m is None else (m.gate_up_proj, m.down_proj)
        with torch.no_grad():
            t_f = bench(lambda: f(x, w, wgu, wd, m))
        if m is not None:
            leaves += list(ws)

        def fb():
            out = f(leaves[0], leaves[1], leaves[2], leaves[3], m)
            torch.autograd.grad(out, leaves, g)

        rows.append(dict(shape=name, impl=impl, label=m.label if m is not None else "triton kernels", fwd=t_f, fwdbwd=bench(fb)))
        print(f"  {name} {impl}: fwd {t_f:.3f} ms, fwd+bwd {rows[-1]['fwdbwd']:.3f} ms  ({time.time() - T0:.0f}s)", flush=True)
    for r in rows:
        r["tflops_fwd"] = flops_fwd / r["fwd"] / 1e9
        r["tflops_fwdbwd"] = 3 * flops_fwd / r["fwdbwd"] / 1e9
    return rows


def table(rows):
    by = {(r["shape"], r["impl"]): r for r in rows}
    lines = ["| shape | implementation | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s | % of dense (fwd+bwd) | triton speedup (fwd+bwd) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dense, tri = by[(r["shape"], "dense")], by[(r["shape"], "triton")]
        lines.append(f"| {r['shape']} | {r['label']} | {r['fwd']:.3f} | {r['tflops_fwd']:.0f} | {r['fwdbwd']:.3f} | "
                     f"{r['tflops_fwdbwd']:.0f} | {100 * dense['fwdbwd'] / r['fwdbwd']:.0f}% | {r['fwdbwd'] / tri['fwdbwd']:.2f}x |")
    return "\n".join(lines)


gpu = torch.cuda.get_device_name().replace(" ", "_") if CUDA else "none(cpu-interpreter-smoke)"
print(f"moe_kernels: device {gpu}, dtype {DT}, tokens {args.tokens}, triton {triton.__version__}, torch {torch.__version__}", flush=True)
ok, max_err = True, 0.0
for name, (H, E, Fd, k, ns) in SHAPES.items():
    good, err = check(name, args.check_tokens, H, E, Fd, k, ns)
    ok, max_err = ok and good, max(max_err, err)
if not ok:
    print(f"moe_kernels: CORRECTNESS FAILED (max_rel_err={max_err:.2e}); no timings taken", flush=True)
    sys.exit(1)
rows = []
for name, (H, E, Fd, k, ns) in SHAPES.items():
    rows += time_shape(name, args.tokens, H, E, Fd, k, ns)
md = table(rows)
print(md)
by = {(r["shape"], r["impl"]): r["fwdbwd"] for r in rows}
tri = by[("compass", "triton")]
summary = dict(gpu=gpu, pct_of_dense=100 * by[("compass", "dense")] / tri,
               vs_grouped_mm=by[("compass", "grouped_mm")] / tri, vs_eager=by[("compass", "eager")] / tri, max_rel_err=max_err)
if args.out:
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "moe_kernels.json").write_text(json.dumps(dict(summary=summary, rows=rows, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())), indent=2))
    Path(args.out, "moe_kernels.md").write_text(md + "\n")
print(f"total {time.time() - T0:.0f}s", flush=True)
fields = dict(gpu=gpu, pct_of_dense=f"{summary['pct_of_dense']:.1f}", vs_grouped_mm=f"{summary['vs_grouped_mm']:.2f}",
              vs_eager=f"{summary['vs_eager']:.2f}", max_rel_err=f"{max_err:.2e}")
if CUDA:  # a smoke run measures nothing, so it keeps no record
    write_record("moe_kernels", fields, details=dict(rows=rows))
print(bench_line("moe_kernels", fields))
