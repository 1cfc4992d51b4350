"""Each lever of the recipe alone: bits per byte (mean and spread over seeds) and expert load max/mean.

The baseline is a training preset's recipe (with --quick: the tiny preset, its model set to the laptop's choices
first_k_dense=0 and aux_loss_alpha=1e-2, so every lever changes something) (`laptop`: MoE in every layer, aux loss alpha = 1e-2, 430k tokens, three
phases). Each lever changes one thing, with the same documents, BPE and tokens (unless the lever is the token count):

    baseline         the preset as it is
    first_dense      a leading dense layer (first_k_dense=1) instead of MoE in every layer
    alpha_1e-3       aux_loss_alpha 1e-3 instead of 1e-2
    tokens_0.4x      0.4 x the steps of every phase (laptop: 172k tokens instead of 430k)
    pretrain_only    the pretrain phase only, lengthened to the same tokens
    pretrain_anneal  pretrain + anneal (re-warmup), pretrain lengthened to the same tokens
    aux_free         aux-loss-free bias balancing instead of the aux loss
    accum4           4 micro-batches of a quarter the size per optimizer step (the pair for the next lever)
    accum4_global    as accum4, the aux loss on the step's global-batch statistics instead of each micro-batch's
                     (on one process with one micro-batch per step the two scopes are the same thing)

Prints one line per lever, `ablation lever=<name> bpb=<mean over seeds> bpb_sd=<sd over seeds> load_max_mean=<x>`
(NTREX bits per byte, mean over languages; load: the last logged expert-load max/mean, mean over MoE layers and seeds),
and writes the record bench/results/ablations.json (its `quick` and `preset` fields say what was run) with commit,
date, machine and load average; nbs/70_eval.ipynb shows its table.

    python bench/ablations.py DATA_DIR [--preset laptop] [--seeds 2] [--levers a,b] [--docs-per-source 2000] [--ntrex 300]
    python bench/ablations.py DATA_DIR --quick [--levers baseline,first_dense]   # tiny preset, half its steps: a smoke test, not evidence
"""
import argparse, json, statistics, sys, tempfile, time
from pathlib import Path

def levers(phases:list[dict], mb:int)->dict:
    "Lever name -> (model overrides, phases, train overrides): one change each against the baseline."
    s = [p['steps'] for p in phases]
    long = s[2] * phases[2]['seq_len'] // phases[0]['seq_len']            # long-context steps in pretrain-length tokens
    scale = lambda f: [{**p, 'steps': max(1, round(p['steps'] * f)), 'warmup_steps': min(p['warmup_steps'], max(1, round(p['steps'] * f)))} for p in phases]
    acc = {'micro_batch_size': max(1, mb // 4), 'grad_accum': 4}
    return {'baseline': ({}, phases, {}), 'first_dense': ({'first_k_dense': 1}, phases, {}),
            'alpha_1e-3': ({'aux_loss_alpha': 1e-3}, phases, {}), 'tokens_0.4x': ({}, scale(0.4), {}),
            'pretrain_only': ({}, [{**phases[0], 'steps': s[0] + s[1] + long}], {}),
            'pretrain_anneal': ({}, [{**phases[0], 'steps': s[0] + long}, phases[1]], {}),
            'aux_free': ({'balance': 'aux_free'}, phases, {}), 'accum4': ({}, phases, acc),
            'accum4_global': ({'balance_scope': 'global'}, phases, acc)}

def load_max_mean(metrics:Path)->float:
    "The last logged expert-load max/mean, averaged over MoE layers."
    recs = [json.loads(l) for l in metrics.read_text().splitlines() if l.strip()]
    last = [r['load_max_mean'] for r in recs if r.get('load_max_mean')]
    return float(statistics.mean(last[-1])) if last else float('nan')

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('data_dir')
    ap.add_argument('--preset', default='laptop')
    ap.add_argument('--seeds', type=int, default=2)
    ap.add_argument('--levers', default=None, help='comma-separated lever names (default: all)')
    ap.add_argument('--docs-per-source', type=int, default=2000)
    ap.add_argument('--ntrex', type=int, default=300, help='NTREX sentences per language')
    ap.add_argument('--vocab', type=int, default=8192)
    ap.add_argument('--steps-scale', type=float, default=1.0, help='multiply every phase length first (1.0: the preset)')
    ap.add_argument('--quick', action='store_true', help='tiny preset at 0.5x steps, 40 docs per source, 16 sentences, vocab 1024')
    ap.add_argument('--out', default=None, help='work folder (default: a temporary one)')
    a = ap.parse_args(argv)
    if a.quick: a.preset, a.docs_per_source, a.ntrex, a.vocab, a.steps_scale = 'tiny', 40, 16, 1024, 0.5
    from compass_nbdev.core import write_record
    from compass_nbdev.data import load_corpus
    from compass_nbdev.tokenizer import train_bpe, to_hf
    from compass_nbdev.train import train_config, run as train_run, TRAIN_PRESETS
    from compass_nbdev.evaluate import bits_per_byte, load_model
    out, t0 = Path(a.out or tempfile.mkdtemp(prefix='ablations_')), time.time()
    docs = load_corpus(a.data_dir, max_docs_per_source=a.docs_per_source, seed=0).to_list()
    tok = to_hf(train_bpe([d['text'] for d in docs], a.vocab))
    phases = [{**p, 'steps': max(2, round(p['steps'] * a.steps_scale))} for p in TRAIN_PRESETS[a.preset]['phases']]
    phases = [{**p, 'warmup_steps': min(p['warmup_steps'], p['steps'] - 1)} for p in phases]
    table = levers(phases, TRAIN_PRESETS[a.preset]['micro_batch_size'])
    base_ov = {'first_k_dense': 0, 'aux_loss_alpha': 1e-2} if a.quick else {}
    names = a.levers.split(',') if a.levers else list(table)
    for n in names:
        if n not in table: sys.exit(f"ablations: error: unknown lever {n!r}; choose from {', '.join(table)}")
    rows = []
    for n in names:
        ov, phases, tov = table[n]
        ov = {**base_ov, **ov}
        bpb, load, tokens = [], [], None
        for seed in range(a.seeds):
            cfg = train_config(a.preset, model_overrides=ov, phases=phases, seed=seed, save_every=10**6, **tov)
            rd = out/f'{n}_s{seed}'
            tokens = train_run(cfg, rd, tok, data=docs, resume=False)['tokens']
            model, mtok = load_model(rd/'model')
            bpb.append(bits_per_byte(model, mtok, a.data_dir, limit=a.ntrex, n_boot=10)['mean_bpb']); load.append(load_max_mean(rd/'metrics.jsonl'))
        rows.append(dict(lever=n, steps=[p['steps'] for p in phases], bpb=round(statistics.mean(bpb), 4), bpb_sd=round(statistics.stdev(bpb), 4) if len(bpb) > 1 else float('nan'),
                         load_max_mean=round(statistics.mean(load), 3), tokens=tokens, bpb_by_seed=bpb, model_overrides=ov, train_overrides=tov,
                         phases=[p['name'] for p in phases]))
        print(f"ablation lever={n} bpb={rows[-1]['bpb']} bpb_sd={rows[-1]['bpb_sd']} load_max_mean={rows[-1]['load_max_mean']}", flush=True)
    rec = write_record('ablations', dict(levers=len(rows), seeds=a.seeds, preset=a.preset, quick=a.quick),
                       details=dict(steps_scale=a.steps_scale, docs=len(docs), ntrex=a.ntrex, seconds=round(time.time() - t0, 1), levers=rows))
    print(rec['line'])

if __name__ == '__main__': main()
