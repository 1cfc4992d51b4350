"""Compile every MoE kernel configuration for a GPU architecture ahead of time, without a GPU, and read the machine code.

For each kernel (and each autotune config of the grouped GEMMs) this prints registers per thread, stack bytes
(register spills go there), shared memory, and counts of matrix instructions in the SASS: HGMMA (Hopper's wgmma,
the fast path), HMMA (older mma.sync) and LDL/STL (local-memory loads/stores, i.e. spills). It uses the ptxas,
cuobjdump and nvdisasm that ship inside the triton wheel, so it runs on a CPU-only machine. Arguments are
specialised the way a real launch on the benchmark shapes would be (pointers and the sizes/strides that are
multiples of 16 are marked divisible by 16; unit strides are constants).

    python bench/moe_kernels_sass.py [--arch 90] [--only gemm|wgrad|small]
"""

import argparse
import os
import subprocess
import tempfile

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 (H100/H200)")
p.add_argument("--only", choices=["gemm", "wgrad", "small"], action="append", help="which kernels (default: all)")
args = p.parse_args()
os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from compass_nbdev import kernels as K  # noqa: E402

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
TARGET = GPUTarget("cuda", args.arch, 64 if args.arch < 100 else 32)
DIV16 = {"N", "K", "M", "stride_am", "stride_we", "stride_wk", "stride_wn", "stride_cm", "stride_xm", "stride_bm",
         "stride_ce", "stride_y", "stride_o", "stride_g", "stride_l"}
TMP = tempfile.mkdtemp(prefix="moe_sass_")


def report(kernel, sig, consts, num_warps, num_stages, tag):
    fn = kernel
    while not isinstance(fn, triton.runtime.jit.JITFunction):  # unwrap autotune / heuristics
        fn = fn.fn
    full = {n: sig.get(n, "constexpr") for n in fn.arg_names}
    div = {n for n in fn.arg_names if (n.endswith("_ptr") or n in DIV16) and n not in consts}
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in div}
    try:
        c = triton.compile(ASTSource(fn, full, constexprs=consts, attrs=attrs), target=TARGET,
                           options=dict(num_warps=num_warps, num_stages=num_stages))
    except Exception as e:  # e.g. out of shared memory for this config
        print(f"{tag:34s} FAILED to compile: {str(e).splitlines()[0][:150]}", flush=True)
        return
    path = os.path.join(TMP, tag + ".cubin")
    with open(path, "wb") as f:
        f.write(c.asm["cubin"])
    res = subprocess.run([f"{BIN}/cuobjdump", "--dump-resource-usage", path], capture_output=True, text=True).stdout
    line = next((ln for ln in res.splitlines() if "REG:" in ln), "")
    field = lambda name: line.split(name + ":")[1].split()[0] if name + ":" in line else "?"
    sass = subprocess.run([f"{BIN}/nvdisasm", path], capture_output=True, text=True).stdout
    counts = " ".join(f"{k}={sass.count(k)}" for k in ("HGMMA", "HMMA", "LDL", "STL"))
    print(f"{tag:34s} regs={field('REG'):>3s} stack={field('STACK'):>4s} shared={c.metadata.shared:6d}  {counts}", flush=True)


bf, i32, f32, i64 = "*bf16", "*i32", "*fp32", "*i64"
only = args.only or ["gemm", "wgrad", "small"]
print(f"triton {triton.__version__}, target sm_{args.arch}")
if "gemm" in only:
    sig = dict(a_ptr=bf, w_ptr=bf, c_ptr=bf, aux_ptr=bf, scale_ptr=f32, tile_expert_ptr=i32, tile_row_ptr=i32,
               offsets_ptr=i32, row_token_ptr=i32, row_slot_ptr=i32, N="i32", K="i32",
               **{s: "i32" for s in "stride_am stride_we stride_wk stride_wn stride_cm stride_xm".split()})
    for cfg in K.gemm_configs():
        bn, bk, w, st = cfg.kwargs["BLOCK_N"], cfg.kwargs["BLOCK_K"], cfg.num_warps, cfg.num_stages
        for epi, gather, scatter, name in [(1, True, False, "swiglu"), (0, False, True, "down"), (2, True, False, "swiglu_bwd")]:
            consts = dict(BLOCK_M=128, BLOCK_N=bn, BLOCK_K=bk, GATHER_A=gather, SCATTER_C=scatter, EPILOGUE=epi,
                          SAVE_AUX=True, DOT_F32=False, EVEN_K=True, EVEN_N=True, stride_ak=1, stride_cn=1)
            report(K.KERNELS["grouped_gemm"], sig, consts, w, st, f"gemm_{name}_n{bn}_k{bk}_w{w}_s{st}")
if "wgrad" in only:
    sig = dict(a_ptr=bf, b_ptr=bf, c_ptr=bf, scale_ptr=f32, offsets_ptr=i32, row_token_ptr=i32, row_slot_ptr=i32,
               M="i32", N="i32", **{s: "i32" for s in "stride_am stride_bm stride_ce stride_cm".split()})
    for cfg in K.wgrad_configs():
        kw = cfg.kwargs
        for ga, gb, sc, name in [(False, True, True, "dw_down"), (True, False, False, "dw_gate_up")]:
            consts = dict(kw, GATHER_A=ga, GATHER_B=gb, SCALE_B=sc, DOT_F32=False, stride_ak=1, stride_bn=1, stride_cn=1)
            report(K.KERNELS["grouped_wgrad"], sig, consts, cfg.num_warps, cfg.num_stages,
                   f"wgrad_{name}_m{kw['BLOCK_M']}_n{kw['BLOCK_N']}_r{kw['BLOCK_R']}_w{cfg.num_warps}")
if "small" in only:
    BT, BE = K.route_blocks(64)
    report(K.KERNELS["route_fwd"], dict(logits_ptr=f32, bias_ptr=f32, probs_ptr=f32, w_ptr=f32, ids_ptr=i64, T="i32", E="i32", stride_l="i32"),
           dict(K=4, K_P2=4, BLOCK_T=BT, BLOCK_E=BE, HAS_BIAS=True, RENORM=True), 4, 1, "route_fwd_E64")
    report(K.KERNELS["route_bwd"], dict(probs_ptr=f32, ids_ptr=i64, w_ptr=f32, gw_ptr=f32, gp_ptr=f32, gl_ptr=f32, T="i32", E="i32"),
           dict(K=4, K_P2=4, BLOCK_T=BT, BLOCK_E=BE, HAS_GP=True, RENORM=True), 4, 1, "route_bwd_E64")
    report(K.KERNELS["hist"], dict(ids_ptr=i64, hist_ptr=i32, S="i32", E="i32"), dict(BLOCK_S=128, BLOCK_E=64), 4, 1, "hist")
    report(K.KERNELS["place"], dict(ids_ptr=i64, base_ptr=i32, row_slot_ptr=i32, row_token_ptr=i32, S="i32", E="i32"),
           dict(K=6, BLOCK_S=128), 4, 1, "place")
    report(K.KERNELS["tiles"], dict(counts_ptr=i32, offsets_ptr=i32, tile_start_ptr=i32, tile_expert_ptr=i32, tile_row_ptr=i32),
           dict(BLOCK_M=128, BLOCK=64), 4, 1, "tiles")
    report(K.KERNELS["combine"], dict(y_ptr=bf, w_ptr=f32, out_ptr=bf, H="i32", stride_y="i32", stride_o="i32"),
           dict(K=6, BLOCK_H=1024, HAS_W=True), 4, 1, "combine")
    report(K.KERNELS["combine_bwd"], dict(g_ptr=bf, y_ptr=bf, gw_ptr=f32, H="i32", stride_g="i32", stride_y="i32"),
           dict(K=6, BLOCK_H=1024), 4, 1, "combine_bwd")
