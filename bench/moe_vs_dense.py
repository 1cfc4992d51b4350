"""The paper's core claim at our scale: MoE (shared + fine-grained routed experts) against a dense model with the same
active parameters, trained on the same tokens, compared by NTREX bits per UTF-8 byte per language.

Both models use the `laptop` training recipe (`compass_nbdev.train.TRAIN_PRESETS['laptop']`): `laptop` (MoE) and
`laptop-dense` (a dense SwiGLU of width (k + shared) × expert width, so the active parameters match). They train in
turn on the same documents (a seeded sample of the corpus in DATA_DIR, `--docs-per-source` per source file) with the
same byte-level BPE (trained on those documents, eval sentences excluded by the data itself), the same seed and the
same number of tokens. Evaluation: `compass_nbdev.evaluate.bits_per_byte` on the first `--ntrex` NTREX sentences
of every language. Writes bench/moe_vs_dense.json and bench/moe_vs_dense.png (loss curves side by side), and ends by
printing `moe_vs_dense bpb_moe=<x> bpb_dense=<x> gain_pct=<x>` (gain = 100 × (dense − moe) / dense, mean over languages).

    python bench/moe_vs_dense.py DATA_DIR [--preset laptop] [--moe-overrides JSON] [--steps-scale 1.0] [--docs-per-source 2000] [--ntrex 300] [--out DIR]
"""
import argparse, json, math, sys, tempfile, time
from pathlib import Path

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('data_dir')
    ap.add_argument('--steps-scale', type=float, default=1.0, help='multiply every stage length (1.0 = the laptop recipe)')
    ap.add_argument('--docs-per-source', type=int, default=2000)
    ap.add_argument('--ntrex', type=int, default=300, help='NTREX sentences per language for bits per byte')
    ap.add_argument('--vocab', type=int, default=8192)
    ap.add_argument('--preset', default='laptop', help="training preset: 'laptop' (the claim) or 'tiny' (a smoke test)")
    ap.add_argument('--moe-overrides', default='{}', help='JSON of CompassConfig fields for the MoE model only, e.g. \'{"aux_loss_alpha": 0.01}\'')
    ap.add_argument('--out', default=None, help='work folder (default: a temporary one)')
    a = ap.parse_args(argv)
    import torch
    from compass_nbdev.data import load_corpus
    from compass_nbdev.tokenizer import train_bpe, to_hf
    from compass_nbdev.train import train_config, train_stage, TRAIN_PRESETS, _read_metrics
    from compass_nbdev.evaluate import bits_per_byte, load_model
    from compass_nbdev.model import CompassConfig, model_stats
    out = Path(a.out or tempfile.mkdtemp(prefix='moe_vs_dense_'))
    t0 = time.time()
    docs = load_corpus(a.data_dir, max_docs_per_source=a.docs_per_source, seed=0).to_list()
    tok = to_hf(train_bpe([d['text'] for d in docs], a.vocab))
    base = TRAIN_PRESETS[a.preset]
    stages = [{**s, 'steps': max(1, round(s['steps'] * a.steps_scale)),
               'warmup_steps': min(s['warmup_steps'], max(1, round(s['steps'] * a.steps_scale)))} for s in base['stages']]
    res, curves = {}, {}
    moe, dense = a.preset, f'{a.preset}-dense'
    for name in (moe, dense):
        ov = json.loads(a.moe_overrides) if name == moe else {}
        cfg = train_config(a.preset, model=name, model_overrides=ov, stages=stages, save_every=10**6)
        mc = cfg.model_config(len(tok)); st = model_stats(mc, seq_len=stages[0]['seq_len'])
        print(f"[{name}] total {st['total']/1e6:.2f}M active {st['active']/1e6:.2f}M params", file=sys.stderr)
        summ = train_stage(cfg, out/name, tok, data=docs, resume=False)
        model, mtok = load_model(out/name/'model')
        bpb = bits_per_byte(model, mtok, a.data_dir, limit=a.ntrex, n_boot=500)
        curves[name] = [(r['global_step'], r['lm_loss']) for r in _read_metrics(out/name/'metrics.jsonl') if 'lm_loss' in r]
        res[name] = dict(params=st, tokens=summ['tokens'], train_s=summ['seconds'], mean_bpb=bpb['mean_bpb'],
                         bpb={l: r['bpb'] for l, r in bpb['langs'].items()}, ci95={l: r['ci95'] for l, r in bpb['langs'].items()})
    m, d = res[moe]['mean_bpb'], res[dense]['mean_bpb']
    gain = 100 * (d - m) / d
    summary = dict(preset=a.preset, moe_overrides=json.loads(a.moe_overrides), steps_scale=a.steps_scale, docs=len(docs), ntrex=a.ntrex, vocab=len(tok), results=res, gain_pct=gain,
                   seconds=round(time.time() - t0, 1))
    here = Path(__file__).parent
    (here/'moe_vs_dense.json').write_text(json.dumps(summary, indent=1))
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.4))
    for n, c in curves.items(): a1.plot([x for x, _ in c], [y for _, y in c], label=n)
    a1.set_xlabel('step'); a1.set_ylabel('LM loss (nats/token)'); a1.legend(); a1.set_title('training loss, same tokens')
    ls = list(res[moe]['bpb']); import numpy as np; x = np.arange(len(ls))
    for j, n in enumerate(res): a2.bar(x + (j - .5) * .4, [res[n]['bpb'][l] for l in ls], .4, label=n)
    a2.set_xticks(x, ls); a2.set_ylabel('bits per byte'); a2.legend(); a2.set_title(f'NTREX bpb (MoE gain {gain:.2f}%)')
    fig.tight_layout(); fig.savefig(here/'moe_vs_dense.png', dpi=90)
    print(f"moe_vs_dense bpb_moe={m:.4f} bpb_dense={d:.4f} gain_pct={gain:.2f}")

if __name__ == '__main__': main()
