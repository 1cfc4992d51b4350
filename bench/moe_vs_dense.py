"""The paper's core claim at our scale: MoE (shared + fine-grained routed experts) against a dense model with the same
active parameters, trained on the same tokens, compared by NTREX bits per UTF-8 byte per language.

Both models use the preset's training recipe (`compass_nbdev.train.TRAIN_PRESETS['laptop']` by default): `laptop`
(MoE) and `laptop-dense` (a dense SwiGLU of width (k + shared) × expert width, so the active parameters match;
`dense_twin_overrides` keeps it matched when the expert layout changes). The presets carry the configuration measured
in bench/RESULTS.md, "MoE vs dense (#7), rerun" (MoE in every layer, aux_loss_alpha 1e-2, 430k tokens at lr 6e-3);
`--moe-overrides`, `--train-overrides`, `--lr-scale`, `--dense-lr-scale` and `--only` are for experiments. They train in
turn on the same documents (a seeded sample of the corpus in DATA_DIR, `--docs-per-source` per source file) with the
same byte-level BPE (trained on those documents, eval sentences excluded by the data itself), the same seed and the
same number of tokens. Evaluation: `compass_nbdev.evaluate.bits_per_byte` on the first `--ntrex` NTREX sentences
of every language. Writes bench/moe_vs_dense.json and bench/moe_vs_dense.png (loss curves side by side), and ends by
printing `moe_vs_dense bpb_moe=<x> bpb_dense=<x> gain_pct=<x> gain_min_pct=<x> seeds=<n>` (gain = 100 × (dense − moe) / dense
of the mean over languages; `bpb_*` and `gain_pct` are means over seeds, `gain_min_pct` the smallest seed's gain).
`--seeds N` trains both twins with training seeds 0..N-1 (model init and data order; the documents and BPE stay the
same); the claim stands when the mean gain is >= 3% and every seed's gain is > 0. The record, with commit, date,
machine and load, goes to bench/results/moe_vs_dense.json.

    python bench/moe_vs_dense.py DATA_DIR [--preset laptop] [--moe-overrides JSON] [--dense-overrides JSON] [--train-overrides JSON]
        [--lr-scale X] [--dense-lr-scale X] [--steps-scale 1.0] [--docs-per-source 2000] [--ntrex 300] [--seeds 1] [--only moe|dense] [--out DIR] [--log FILE]
"""
import argparse, json, math, sys, tempfile, time
from pathlib import Path

# MoE-only fields: not passed to the dense twin (its FFN width follows the MoE's active experts instead)
MOE_ONLY = {'n_routed_experts', 'num_experts_per_tok', 'n_shared_experts', 'moe_intermediate_size', 'first_k_dense',
            'norm_topk_prob', 'capacity_factor', 'moe_impl', 'balance', 'balance_scope', 'aux_loss_alpha', 'z_loss_beta',
            'bias_update_rate', 'intermediate_size'}

def dense_twin_overrides(preset:str, moe_overrides:dict)->dict:
    "Overrides of `{preset}-dense` that match the MoE's body and its active FFN width ((k + shared) x expert width)."
    from compass_nbdev.model import CompassConfig
    m = CompassConfig.from_preset(preset, **moe_overrides)
    return {**{k: v for k, v in moe_overrides.items() if k not in MOE_ONLY},
            'intermediate_size': (m.num_experts_per_tok + m.n_shared_experts) * m.moe_intermediate_size}

def save_results(summary:dict, curves:dict, dest:Path):
    "Write moe_vs_dense.json and moe_vs_dense.png (loss curves; bits per byte per language) into `dest`."
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt, numpy as np
    dest = Path(dest); (dest/'moe_vs_dense.json').write_text(json.dumps(summary, indent=1))
    res = summary['results']; moe = summary['preset']; gain = summary['gain_pct']
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.4))
    for n, c in curves.items(): a1.plot([x for x, _ in c], [y for _, y in c], label=n)
    a1.set_xlabel('step'); a1.set_ylabel('LM loss (nats/token)'); a1.legend(); a1.set_title('training loss, same tokens')
    ls = list(res[moe]['bpb']); x = np.arange(len(ls))
    for j, n in enumerate(res): a2.bar(x + (j - .5) * .4, [res[n]['bpb'][l] for l in ls], .4, label=n)
    a2.set_xticks(x, ls); a2.set_ylabel('bits per byte'); a2.legend(); a2.set_title(f'NTREX bpb (MoE gain {gain:.2f}%)')
    fig.tight_layout(); fig.savefig(dest/'moe_vs_dense.png', dpi=90); plt.close(fig)

def mean_over_seeds(rs:list[dict])->dict:
    "One model's results averaged over seeds: bits per byte per language and their mean; the rest from the first seed."
    n = len(rs)
    return {**rs[0], 'mean_bpb': sum(r['mean_bpb'] for r in rs) / n, 'bpb': {l: sum(r['bpb'][l] for r in rs) / n for l in rs[0]['bpb']},
            'mean_bpb_by_seed': [r['mean_bpb'] for r in rs]}

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('data_dir')
    ap.add_argument('--steps-scale', type=float, default=1.0, help='multiply every stage length (1.0 = the laptop recipe)')
    ap.add_argument('--docs-per-source', type=int, default=2000)
    ap.add_argument('--ntrex', type=int, default=300, help='NTREX sentences per language for bits per byte')
    ap.add_argument('--vocab', type=int, default=8192)
    ap.add_argument('--preset', default='laptop', help="training preset: 'laptop' (the claim) or 'tiny' (a smoke test)")
    ap.add_argument('--moe-overrides', default='{}', help='JSON of CompassConfig fields for the MoE model only, e.g. \'{"aux_loss_alpha": 0.01}\'')
    ap.add_argument('--dense-overrides', default='{}', help='JSON of CompassConfig fields for the dense model only')
    ap.add_argument('--train-overrides', default='{}', help='JSON of TrainConfig fields for both models, e.g. \'{"micro_batch_size": 16}\'')
    ap.add_argument('--lr-scale', type=float, default=1.0, help='multiply every stage\'s peak lr, both models')
    ap.add_argument('--dense-lr-scale', type=float, default=None, help='lr multiplier for the dense model only (default: --lr-scale)')
    ap.add_argument('--seeds', type=int, default=1, help='train both twins with seeds 0..N-1 and report the mean and the smallest gain')
    ap.add_argument('--only', choices=('both', 'moe', 'dense'), default='both', help='train one side only (screening)')
    ap.add_argument('--log', default=None, help='append one JSON line with the configuration and results to this file')
    ap.add_argument('--out', default=None, help='work folder (default: a temporary one)')
    a = ap.parse_args(argv)
    import os, torch
    from compass_nbdev.data import load_corpus
    from compass_nbdev.tokenizer import train_bpe, to_hf
    from compass_nbdev.train import train_config, run as train_run, TRAIN_PRESETS, read_metrics
    from compass_nbdev.evaluate import bits_per_byte, load_model
    from compass_nbdev.model import CompassConfig, model_stats
    moe_ov, train_ov = json.loads(a.moe_overrides), json.loads(a.train_overrides)
    lr_scale = a.lr_scale
    dense_lr_scale = a.dense_lr_scale if a.dense_lr_scale is not None else lr_scale
    out = Path(a.out or tempfile.mkdtemp(prefix='moe_vs_dense_'))
    t0 = time.time()
    docs = load_corpus(a.data_dir, max_docs_per_source=a.docs_per_source, seed=0).to_list()
    tok_dir = out/f'tokenizer_{a.docs_per_source}_{a.vocab}'   # reused when --out is given again (same docs, same BPE)
    if (tok_dir/'tokenizer.json').exists():
        from transformers import PreTrainedTokenizerFast
        tok = PreTrainedTokenizerFast.from_pretrained(tok_dir, split_special_tokens=True, clean_up_tokenization_spaces=False)
    else:
        tok = to_hf(train_bpe([d['text'] for d in docs], a.vocab)); tok.save_pretrained(tok_dir)
    print(f"[data] {len(docs)} docs, tokenizer {len(tok)} ({time.time() - t0:.0f}s)", file=sys.stderr)
    base = {**TRAIN_PRESETS[a.preset], **{k: v for k, v in train_ov.items() if k not in ('stage_steps', 'stage_lr')}}
    if 'stage_steps' in train_ov:
        if len(train_ov['stage_steps']) != len(base['phases']): sys.exit(f"stage_steps needs {len(base['phases'])} numbers")
        base['phases'] = [{**s, 'steps': n} for s, n in zip(base['phases'], train_ov['stage_steps'])]
    if 'stage_lr' in train_ov:
        if len(train_ov['stage_lr']) != len(base['phases']): sys.exit(f"stage_lr needs {len(base['phases'])} numbers")
        base['phases'] = [{**s, 'lr': lr} for s, lr in zip(base['phases'], train_ov['stage_lr'])]
    def scaled(lr_mult):
        out = []
        for s in base['phases']:
            n = max(1, round(s['steps'] * a.steps_scale))
            out.append({**s, 'steps': n, 'warmup_steps': min(s['warmup_steps'], n), 'lr': s['lr'] * lr_mult})
        return out
    moe, dense = a.preset, f'{a.preset}-dense'
    # the dense twin: same body, one SwiGLU as wide as the MoE's active experts (k + shared) x expert width
    dense_ov = {**dense_twin_overrides(moe, moe_ov), **json.loads(a.dense_overrides)}
    plan = {moe: (moe_ov, lr_scale), dense: (dense_ov, dense_lr_scale)}
    if a.only != 'both': plan = {k: v for k, v in plan.items() if k == (moe if a.only == 'moe' else dense)}
    by_seed, curves = [], {}
    for seed in range(a.seeds):
        res = {}
        for name, (ov, lrm) in plan.items():
            train_ov_m = {k: v for k, v in train_ov.items() if k not in ('stages', 'phases', 'stage_steps', 'stage_lr', 'seed')}
            cfg = train_config(a.preset, model=name, model_overrides=ov, phases=scaled(lrm), save_every=10**6, seed=seed, **train_ov_m)
            mc = cfg.model_config(len(tok)); st = model_stats(mc, seq_len=cfg.phases[0].seq_len)
            print(f"[{name}] total {st['total']/1e6:.3f}M active {st['active']/1e6:.3f}M params", file=sys.stderr)
            t1 = time.time()
            summ = train_run(cfg, out/f'{name}_s{seed}', tok, data=docs, resume=False)
            model, mtok = load_model(out/f'{name}_s{seed}'/'model')
            bpb = bits_per_byte(model, mtok, a.data_dir, limit=a.ntrex, n_boot=500)
            if seed == 0: curves[name] = [(r['global_step'], r['lm_loss']) for r in read_metrics(out/f'{name}_s{seed}'/'metrics.jsonl') if 'lm_loss' in r]
            res[name] = dict(params=st, overrides=ov, lr_scale=lrm, tokens=summ['tokens'], train_s=summ['seconds'],
                             wall_s=round(time.time() - t1, 1), final_lm_loss=curves[name][-1][1] if curves.get(name) else None,
                             mean_bpb=bpb['mean_bpb'], bpb={l: r['bpb'] for l, r in bpb['langs'].items()},
                             ci95={l: r['ci95'] for l, r in bpb['langs'].items()})
            print(f"[{name} seed {seed}] mean_bpb {bpb['mean_bpb']:.4f} tokens {summ['tokens']} train {summ['seconds']:.0f}s", file=sys.stderr)
        by_seed.append(res)
    res = {n: mean_over_seeds([r[n] for r in by_seed]) for n in plan}
    mean = lambda n: res[n]['mean_bpb'] if n in res else float('nan')
    m, d = mean(moe), mean(dense)
    gains = [100 * (r[dense]['mean_bpb'] - r[moe]['mean_bpb']) / r[dense]['mean_bpb'] for r in by_seed] if a.only == 'both' else [float('nan')]
    gain = sum(gains) / len(gains)
    summary = dict(preset=a.preset, moe_overrides=moe_ov, dense_overrides=dense_ov, train_overrides=train_ov,
                   lr_scale=lr_scale, dense_lr_scale=dense_lr_scale, steps_scale=a.steps_scale, docs=len(docs),
                   ntrex=a.ntrex, vocab=len(tok), seeds=a.seeds, results=res, by_seed=by_seed, gain_pct=gain,
                   gain_by_seed=gains, gain_min_pct=min(gains), seconds=round(time.time() - t0, 1), loadavg=os.getloadavg())
    if a.log:
        with open(a.log, 'a') as f: f.write(json.dumps({k: v for k, v in summary.items()}, default=str) + '\n')
    if a.only != 'both':
        print(f"moe_vs_dense only={a.only} bpb={m if a.only == 'moe' else d:.4f}"); return
    here = Path(__file__).parent if a.preset == 'laptop' else out   # only the laptop claim replaces bench/'s files
    save_results(summary, curves, here)
    from compass_nbdev.core import write_record
    rec = write_record('moe_vs_dense', dict(bpb_moe=f'{m:.4f}', bpb_dense=f'{d:.4f}', gain_pct=f'{gain:.2f}', gain_min_pct=f'{min(gains):.2f}', seeds=a.seeds),
                       path=here/'results'/'moe_vs_dense.json', args=vars(a),
                       details=dict(preset=a.preset, gain_by_seed=gains, steps_scale=a.steps_scale, seconds=summary['seconds']))
    print(rec['line'])

if __name__ == '__main__': main()
