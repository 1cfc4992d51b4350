"""Training-step time (forward + backward) of CompassForCausalLM vs transformers' Qwen3-MoE and Qwen2-MoE on CPU.

Same process, same sizes, 2 CPU threads. Qwen3-MoE has no shared experts, so it is compared with Compass built with
n_shared_experts=0; Qwen2-MoE is compared with Compass with one shared expert. Each peer runs with each of its
experts implementations (transformers 5.x `experts_implementation`: eager, grouped_mm, batched_mm).
Ends by printing `model_cpu ratio=<our step time / fastest peer's> peak_mb=<ours>`: the worse of the two pairings
(Compass without shared experts vs the fastest Qwen3-MoE variant, Compass with one shared expert vs the fastest
Qwen2-MoE variant), from median step times (`--stat min`, or `--threads 1 --stat cpu` = median process CPU time of one thread, which
measures the work done and is the least disturbed figure when other jobs share the cores).

    python bench/model_cpu.py [--steps 5] [--batch 2 --seq 256] [--experts 32 --expert 128 --k 4] ...
    python bench/model_cpu.py --profile 3 --impls grouped_mm   # also: where each model's step time goes, by op
    python bench/model_cpu.py --keep-freed-memory              # glibc keeps freed memory: no model pays page faults

Before the final line, a "matmul floor" line per pairing: the step's matrix-product work (`model_stats`' training
FLOPs per token: 6 x active parameters + causal attention) at the rate of the output head's product alone, and how
far each model's step is above it. Both models do that work, so the floor bounds the ratio either can reach.

Models are timed round robin in blocks: each model in turn runs `--block` consecutive steps, the first of which is
not timed. Changes in machine load hit all models alike, and every timed step runs in the allocator state that the
model's own previous step left, as in a training loop; one step of each model in turn would time every model in the
heap left by another (batched_mm frees 3.5 GB per step). The peak memory of each is measured in a warm-up step while the
others are idle (peak RSS increase, Linux only).
"""
import argparse, ctypes, gc, os, resource
import torch
from compass_nbdev.core import time_calls, median_ms
from compass_nbdev.fast_cpu import keep_freed_memory

def rss_mb():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'): return int(line.split()[1]) / 1024

def hwm_mb():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM'): return int(line.split()[1]) / 1024

def reset_peak():
    gc.collect()
    try: ctypes.CDLL('libc.so.6').malloc_trim(0)
    except OSError: pass
    try:
        with open('/proc/self/clear_refs', 'w') as f: f.write('5')     # resets VmHWM (peak RSS) on Linux
    except OSError: pass

def sizes(a):
    return dict(vocab_size=a.vocab, hidden_size=a.hidden, num_hidden_layers=a.layers, num_attention_heads=a.heads,
                num_key_value_heads=a.kv_heads, head_dim=a.hidden // a.heads, moe_intermediate_size=a.expert,
                num_experts_per_tok=a.k)

def build_compass(a, n_shared):
    from compass_nbdev.model import CompassConfig, CompassForCausalLM
    s = sizes(a)
    cfg = CompassConfig(**s, n_routed_experts=a.experts, n_shared_experts=n_shared, first_k_dense=0,
                        norm_topk_prob=True, tie_word_embeddings=False, balance='aux', aux_loss_alpha=1e-3,
                        z_loss_beta=0., max_position_embeddings=4096)
    return CompassForCausalLM(cfg)

def build_qwen3(a, impl):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
    s = sizes(a)
    cfg = Qwen3MoeConfig(**s, num_experts=a.experts, intermediate_size=a.expert * a.k, norm_topk_prob=True,
                         tie_word_embeddings=False, output_router_logits=True, router_aux_loss_coef=1e-3,
                         max_position_embeddings=4096)
    return Qwen3MoeForCausalLM._from_config(cfg, experts_implementation=impl, attn_implementation='sdpa')

def build_qwen2(a, impl):
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM
    s = sizes(a)
    cfg = Qwen2MoeConfig(**s, num_experts=a.experts, intermediate_size=a.expert * a.k, norm_topk_prob=True,
                         shared_expert_intermediate_size=a.expert, tie_word_embeddings=False,
                         output_router_logits=True, router_aux_loss_coef=1e-3, max_position_embeddings=4096)
    return Qwen2MoeForCausalLM._from_config(cfg, experts_implementation=impl, attn_implementation='sdpa')

def product_rate(a, repeats:int=15)->float:
    "GFLOP/s of the output head's product (tokens x hidden by hidden x vocab) alone: the best rate a step's products get."
    h, w = torch.randn(a.batch * a.seq, a.hidden), torch.randn(a.vocab, a.hidden)
    z = torch.empty(h.shape[0], a.vocab)
    for _ in range(3): torch.mm(h, w.t(), out=z)                            # warm-up
    ts = time_calls({'mm': lambda: torch.mm(h, w.t(), out=z)}, rounds=repeats)['mm']['wall']
    return 2 * h.shape[0] * a.hidden * a.vocab / (median_ms(ts) / 1e3) / 1e9

def train_step(model, x):
    out = model(input_ids=x, labels=x)
    out.loss.backward()
    model.zero_grad(set_to_none=True)

def peak_mb(model, x):
    "Peak RSS increase (MB) over one training step, measured with the other models idle."
    reset_peak(); base = rss_mb()
    train_step(model, x)
    return hwm_mb() - base

def op_times(model, x, steps):
    "Self CPU time (ms per step) of each op over `steps` profiled training steps."
    from torch.profiler import profile
    with profile() as prof:
        for _ in range(steps): train_step(model, x)
    return {e.key: e.self_cpu_time_total / 1e3 / steps for e in prof.key_averages()}

def profile_pair(ours, peer, name_ours, name_peer, x, steps, top=18):
    "Print the ops whose time differs most between two models, profiled one step at a time in turn."
    a, b = {}, {}
    for _ in range(steps):                   # alternate, so load changes hit both alike
        for m, acc in ((ours, a), (peer, b)):
            for k, v in op_times(m, x, 1).items(): acc[k] = acc.get(k, 0) + v / steps
    ta, tb = sum(a.values()), sum(b.values())
    print(f"\nprofile (self CPU ms per step, {steps} steps each, profiler overhead included): "
          f"{name_ours} {ta:.1f} vs {name_peer} {tb:.1f}")
    print(f"{'op':58s} {'ours':>8s} {'peer':>8s} {'diff':>8s}")
    for k in sorted(set(a) | set(b), key=lambda k: -max(a.get(k, 0), b.get(k, 0)))[:top]:
        print(f"{k[:58]:58s} {a.get(k, 0):8.2f} {b.get(k, 0):8.2f} {a.get(k, 0) - b.get(k, 0):+8.2f}")

def main():
    p = argparse.ArgumentParser()
    p.add_argument('--steps', type=int, default=12, help='timed steps per model')
    p.add_argument('--block', type=int, default=4, help='consecutive steps per turn (the first one untimed)')
    p.add_argument('--batch', type=int, default=2); p.add_argument('--seq', type=int, default=256)
    p.add_argument('--vocab', type=int, default=8192); p.add_argument('--hidden', type=int, default=256)
    p.add_argument('--layers', type=int, default=4); p.add_argument('--heads', type=int, default=4)
    p.add_argument('--kv-heads', type=int, default=2); p.add_argument('--experts', type=int, default=32)
    p.add_argument('--k', type=int, default=4); p.add_argument('--expert', type=int, default=128)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--stat', choices=['median', 'min', 'cpu'], default='median',
                   help='statistic for the final ratio (cpu: median process CPU time, robust under load with --threads 1)')
    p.add_argument('--impls', default='eager,grouped_mm,batched_mm')
    p.add_argument('--max-batched-gb', type=float, default=4.0)
    p.add_argument('--batched-steps', type=int, default=2)
    p.add_argument('--profile', type=int, default=0, help='after timing, profile this many steps of each pairing, by op')
    p.add_argument('--keep-freed-memory', action='store_true',
                   help="glibc only, all models alike: keep freed memory in the process, so no step pays page faults")
    a = p.parse_args()
    if a.keep_freed_memory: keep_freed_memory()
    torch.set_num_threads(a.threads)
    import transformers
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.2f}, freed memory {'kept (mallopt)' if a.keep_freed_memory else 'glibc default'}", flush=True)
    print(f"sizes: tokens {a.batch}x{a.seq}, vocab {a.vocab}, hidden {a.hidden}, layers {a.layers}, heads {a.heads}/{a.kv_heads}, "
          f"experts {a.experts} x width {a.expert}, top-{a.k}", flush=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g)
    runs = [('compass (no shared)', lambda: build_compass(a, 0)), ('compass (1 shared)', lambda: build_compass(a, 1))]
    for impl in a.impls.split(','):
        runs += [(f'qwen3_moe[{impl}]', lambda impl=impl: build_qwen3(a, impl)),
                 (f'qwen2_moe[{impl}]', lambda impl=impl: build_qwen2(a, impl))]
    S = a.batch * a.seq * a.k
    bmm_gb = a.layers * S * 3 * a.hidden * a.expert * 4 / 1e9
    models = {}
    for name, build in runs:
        if 'batched_mm' in name and bmm_gb > a.max_batched_gb:
            print(f"{name}: skipped, it would gather {bmm_gb:.1f} GB of per-token expert weights (> --max-batched-gb)")
            continue
        torch.manual_seed(0)
        models[name] = build().train()
    for m in models.values(): train_step(m, x)      # warm-up step of every model
    mem = {name: peak_mb(m, x) for name, m in models.items()}   # then each one's peak, the others idle
    per_turn = max(a.block - 1, 1)
    faults = {n: [] for n in models}         # minor page faults of every step (the untimed ones too)
    def counted(n):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        train_step(models[n], x)
        faults[n].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    def timed(names, steps):                 # round robin of blocks (`core.time_calls`), so load hits every model alike
        fns = {n: (lambda n=n: counted(n)) for n in names}
        return time_calls(fns, rounds=-(-steps // per_turn), per=per_turn, settle=a.block > 1) if fns else {}
    slow = [n for n in models if 'batched_mm' in n]                   # ~30x slower: fewer steps, timed on their own
    ts = {**timed([n for n in models if n not in slow], a.steps), **timed(slow, a.batched_steps)}
    res = {}
    for name, m in models.items():
        med, mn, n = median_ms(ts[name]['wall']) / 1e3, min(ts[name]['wall']), sum(p.numel() for p in m.parameters())
        cs = median_ms(ts[name]['cpu']) / 1e3
        res[name] = (med, mn, mem[name], n, cs)
        print(f"{name:24s} params {n/1e6:6.2f}M  step median {med*1e3:8.1f} ms  min {mn*1e3:8.1f} ms  "
              f"CPU {cs*1e3:8.1f} ms  peak +{mem[name]:7.1f} MB  page faults {sorted(faults[name])[len(faults[name]) // 2]:7.0f}/step", flush=True)
    def ratios(i):   # i = 0: median step time, 1: minimum (least disturbed by other processes), 4: median CPU time
        q3 = min((v[i], k) for k, v in res.items() if k.startswith('qwen3'))
        q2 = min((v[i], k) for k, v in res.items() if k.startswith('qwen2'))
        return res['compass (no shared)'][i] / q3[0], q3[1], res['compass (1 shared)'][i] / q2[0], q2[1]
    for i, stat in [(0, 'median'), (1, 'min'), (4, 'median process CPU time')]:
        r3, n3, r2, n2 = ratios(i)
        print(f"[{stat}] ours / fastest Qwen3-MoE ({n3}): {r3:.3f}x; ours (1 shared) / fastest Qwen2-MoE ({n2}): {r2:.3f}x", flush=True)
    from compass_nbdev.model import model_stats
    rate, (_, n3, _, n2) = product_rate(a), ratios(0)
    for ours, peer in (('compass (no shared)', n3), ('compass (1 shared)', n2)):
        gflop = model_stats(models[ours].config, seq_len=a.seq)['train_flops_per_token'] * a.batch * a.seq / 1e9
        floor, t_ours, t_peer = gflop / rate * 1e3, res[ours][0] * 1e3, res[peer][0] * 1e3
        print(f"matmul floor, {ours}: {gflop:.2f} GFLOP per step at {rate:.0f} GFLOP/s (the head's product alone) = "
              f"{floor:.1f} ms; above it: ours {t_ours - floor:.1f} ms, {peer} {t_peer - floor:.1f} ms; "
              f"0.8x needs ours <= {0.8 * t_peer:.1f} ms", flush=True)
    if a.profile:
        for ours, peer in (('compass (no shared)', n3), ('compass (1 shared)', n2)):
            profile_pair(models[ours], models[peer], ours, peer, x, a.profile)
    r3, _, r2, _ = ratios({'median': 0, 'min': 1, 'cpu': 4}[a.stat])
    from compass_nbdev.core import write_record
    peak = max(res['compass (no shared)'][2], res['compass (1 shared)'][2])
    rec = write_record('model_cpu', dict(ratio=f'{max(r3, r2):.3f}', peak_mb=f'{peak:.0f}'), args=vars(a),
                       details=dict(ratio_qwen3=round(r3, 3), ratio_qwen2=round(r2, 3),
                                    step_ms={k: round(v[0] * 1e3, 1) for k, v in res.items()}))
    print(rec['line'])

if __name__ == '__main__':
    main()
