"""A/B timing on CPU: this working tree's `compass_nbdev` against the package at an earlier commit, in one process.

Extracts `compass_nbdev/` at `--base` (default HEAD) with `git archive` into a temporary folder under another name,
builds the same models from both with the same seed, and times them interleaved, so that machine load hits both alike.
Three levels, at `bench/model_cpu.py`'s sizes (tokens 2×256, hidden 256, 4 layers, 32 experts × 128, top-4, vocab 8192):

- `head`: output head + mean cross-entropy, forward + backward (the op `head_loss` that `auto` picks, against the
  base's `linear_cross_entropy`, or `F.linear` + `F.cross_entropy` when `--base` predates it);
- `moe`: one `CompassMoE` layer, forward + backward, without and with one shared expert;
- `model`: the whole `CompassForCausalLM` training step, blocks of 4 steps with the first untimed.

    python bench/cpu_ab.py --base main [--keep-freed-memory] [--only model --rounds 20]

Prints one line per comparison: median times, the change, and the largest difference of the outputs; ends with
`cpu_ab base=<commit> head_pct= moe0_pct= moe1_pct= model0_pct= model1_pct=` (changes in per cent, new against base;
0/1 = shared experts) and writes it as the record `bench/results/cpu_ab.json`.
"""
import argparse, importlib, importlib.util, io, subprocess, sys, tarfile, tempfile
from pathlib import Path
import torch
import torch.nn.functional as F
from compass_nbdev.core import time_calls, median_ms, write_record
from compass_nbdev.fast_cpu import keep_freed_memory
from compass_nbdev.ops import get_op

def load_base(commit:str, dest:Path):
    "Import `compass_nbdev` as it was at `commit`, as the package `compass_base` (from its files, not from sys.path)."
    tar = subprocess.run(['git', 'archive', commit, 'compass_nbdev'], capture_output=True, check=True).stdout
    tarfile.open(fileobj=io.BytesIO(tar)).extractall(dest)
    root = dest/'compass_nbdev'
    spec = importlib.util.spec_from_file_location('compass_base', root/'__init__.py', submodule_search_locations=[str(root)])
    pkg = importlib.util.module_from_spec(spec); sys.modules['compass_base'] = pkg; spec.loader.exec_module(pkg)
    return importlib.import_module('compass_base.model'), importlib.import_module('compass_base.moe')

def interleave(fns:dict, rounds:int, per:int=1, settle:bool=False)->dict:
    "Median wall ms of each fn, timed in turn (`core.time_calls`), so that machine load hits all alike."
    return {k: median_ms(v['wall']) for k, v in time_calls(fns, rounds, per, settle).items()}

def report(what, m, diff, key, out:dict):
    "Print one comparison and keep its change (per cent) under `key` for the final line."
    print(f"{what:34s} base {m['base']:7.2f} ms   new {m['new']:7.2f} ms   {m['new']/m['base']-1:+6.1%}   max rel diff {diff:.1e}", flush=True)
    out[key] = f"{100 * (m['new'] / m['base'] - 1):.1f}"

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--base', default='HEAD'); ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--keep-freed-memory', action='store_true', help='glibc: keep freed memory (no page faults), both alike')
    ap.add_argument('--only', choices=('head', 'moe', 'model', 'all'), default='all')
    ap.add_argument('--rounds', type=int, default=6, help='model level: rounds of 3 timed steps per model')
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.keep_freed_memory: keep_freed_memory()
    import compass_nbdev.model as NM, compass_nbdev.moe as NE
    tmp = tempfile.TemporaryDirectory()
    BM, BE = load_base(a.base, Path(tmp.name))
    print(f"base {a.base} vs working tree; threads {a.threads}; freed memory {'kept' if a.keep_freed_memory else 'glibc default'}")
    g, res = torch.Generator().manual_seed(0), {}
    if a.only in ('head', 'all'):
        h0, w = torch.randn(512, 256, generator=g), (torch.randn(8192, 256, generator=g) * .02).requires_grad_()
        t = torch.randint(0, 8192, (512,), generator=g)
        new_head = get_op('head_loss', 'cpu')                   # what the model's training step uses with `auto`
        base_head = getattr(BM, 'linear_cross_entropy', None) or (lambda h, w, t: F.cross_entropy(F.linear(h, w), t))
        def head(new):
            def f():
                h = h0.clone().requires_grad_(); w.grad = None
                l = new_head(h, w, t) if new else base_head(h, w, t)
                l.backward(); return l.detach()
            return f
        diff = float((head(True)() - head(False)()).abs())
        report('head + loss (fwd+bwd)', interleave({'base': head(False), 'new': head(True)}, 30), diff, 'head_pct', res)
    if a.only in ('moe', 'all'):
        x0 = torch.randn(512, 256, generator=g)
        for shared in (0, 1):
            mods = {}
            for k, E in (('base', BE), ('new', NE)):
                torch.manual_seed(0); mods[k] = E.CompassMoE(256, 128, 32, 4, shared)
            def run(m):
                x = x0.clone().requires_grad_(); m.zero_grad(set_to_none=True)
                y, aux = m(x); (y.sum() + aux['probs'].sum()).backward(); return y.detach()
            ya, yb = run(mods['base']), run(mods['new'])
            diff = float((ya - yb).abs().max() / ya.abs().max())
            report(f'MoE layer, {shared} shared (fwd+bwd)', interleave({k: (lambda m=m: run(m)) for k, m in mods.items()}, 30, settle=True), diff,
                   f'moe{shared}_pct', res)
    if a.only in ('model', 'all'):
        x = torch.randint(0, 8192, (2, 256), generator=g)
        for shared in (0, 1):
            ms = {}
            for k, M in (('base', BM), ('new', NM)):
                cfg = M.CompassConfig(vocab_size=8192, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                      num_key_value_heads=2, head_dim=64, moe_intermediate_size=128, num_experts_per_tok=4,
                                      n_routed_experts=32, n_shared_experts=shared, first_k_dense=0, tie_word_embeddings=False,
                                      aux_loss_alpha=1e-3, z_loss_beta=0., max_position_embeddings=4096)
                torch.manual_seed(0); ms[k] = M.CompassForCausalLM(cfg).train()
            def step(m):
                out = m(input_ids=x, labels=x); out.loss.backward(); m.zero_grad(set_to_none=True); return out.loss.detach()
            la, lb = step(ms['base']), step(ms['new'])
            report(f'model step, {shared} shared', interleave({k: (lambda m=m: step(m)) for k, m in ms.items()}, a.rounds, per=3, settle=True),
                   float((la - lb).abs() / la.abs()), f'model{shared}_pct', res)
    rec = write_record('cpu_ab', dict(base=a.base, **res), args=vars(a))
    print(rec['line'])

if __name__ == '__main__':
    main()
