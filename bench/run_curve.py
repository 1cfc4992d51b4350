"""What a longer run buys: `compass run` at a preset, then bits per byte and task accuracy at its checkpoints.

    python bench/run_curve.py --preset laptop-long [--data-dir DIR] [--points 5] [--keep RUN_DIR]

Runs data → tokenizer → train → eval (what `compass run` runs; its wall time is the preset's cost on this machine),
keeping every checkpoint, then evaluates a few of them (evenly spread, the last one included) with the run's
evaluation settings: NTREX bits per byte per language and every task the data directory offers, each task group's
accuracy pooled over its languages with a Wilson 95% interval beside its chance and majority levels. Ends with
`run_curve preset= wall_s= train_s= tokens= bpb_first= bpb_last= groups_above_chance= groups_above_majority=`;
the record `bench/results/run_curve_<preset>.json` holds the whole curve (issue 19: the `laptop-long` preset
against the 10-minute `laptop` default).
"""
import argparse, json, resource, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from compass_run import task_groups

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--preset', default='laptop-long'); ap.add_argument('--data-dir', default=None)
    ap.add_argument('--points', type=int, default=5, help="checkpoints to evaluate, the last one included")
    ap.add_argument('--keep', default=None, help="run folder to keep (default: a temporary one)")
    a = ap.parse_args()
    import torch
    from safetensors.torch import load_model as load_weights
    from compass_nbdev.core import resolve_data_dir, write_record, atomic_write_json
    from compass_nbdev.cli import resolve_config, run_recipe, STAGES
    from compass_nbdev.train import list_checkpoints
    from compass_nbdev.model import CompassConfig
    from compass_nbdev.evaluate import load_model, bpb_texts, bits_per_byte, evaluate_tasks
    data_dir = resolve_data_dir(a.data_dir)
    if data_dir is None: sys.exit("run_curve needs the shared data: pass --data-dir or set COMPASS_DATA_DIR")
    cfg = resolve_config(a.preset, None, {'data_dir': str(data_dir), 'name': f'bench_curve_{a.preset}', 'train': {'keep_last': 1000}})
    tmp = None if a.keep else tempfile.TemporaryDirectory()
    run = Path(a.keep or tmp.name)/'run'
    secs, out = {}, {}
    for stage in STAGES:
        t = time.perf_counter()
        out.update(run_recipe(cfg, run, stages=[stage]))
        secs[stage] = round(time.perf_counter() - t, 1)
        print(f"{stage}: {secs[stage]} s", file=sys.stderr, flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    ph = cfg.train.phases
    seq = lambda step: next((p.seq_len for i, p in enumerate(ph) if step <= sum(q.steps for q in ph[:i + 1])), ph[-1].seq_len)
    tokens_at = lambda step: sum(min(max(step - sum(q.steps for q in ph[:i]), 0), p.steps) * p.seq_len
                                 for i, p in enumerate(ph)) * cfg.train.micro_batch_size * cfg.train.grad_accum
    def theta_at(step, base):   # the RoPE base the model trained with at this step (a phase may change it)
        th = base
        for i, p in enumerate(ph):
            if step > sum(q.steps for q in ph[:i]) and p.rope_theta is not None: th = p.rope_theta
        return th
    ckpts = list_checkpoints(run/'checkpoints')
    pick = sorted({ckpts[round(i * (len(ckpts) - 1) / max(a.points - 1, 1))] for i in range(a.points)}) if ckpts else []
    model, tok = load_model(run/'model', 'cpu')
    base = CompassConfig.from_preset(cfg.train.model, **cfg.train.model_overrides).rope_theta   # before any phase changes it
    source, texts = bpb_texts(data_dir, cfg.eval.bpb_limit)
    curve = []
    for step, p in pick:
        t = time.perf_counter()
        load_weights(model, str(p/'model.safetensors')); model.config.rope_theta = theta_at(step, base); model.eval()
        bpb = bits_per_byte(model, tok, texts=texts, batch_size=cfg.eval.batch_size)
        with tempfile.TemporaryDirectory() as td:
            tres = evaluate_tasks(model, tok, cfg.eval.tasks, data_dir, cfg.eval.task_limit, cfg.eval.num_fewshot, cfg.eval.batch_size)
            (Path(td)/'tasks.json').write_text(json.dumps(tres)); groups = task_groups(Path(td)/'tasks.json')
        pt = dict(step=step, tokens=tokens_at(step), rope_theta=model.config.rope_theta, mean_bpb=bpb['mean_bpb'],
                  bpb={l: v['bpb'] for l, v in bpb['langs'].items()}, groups=groups, eval_s=round(time.perf_counter() - t, 1))
        curve.append(pt)
        print(f"step {step} tokens {pt['tokens']}: mean bpb {pt['mean_bpb']:.4f}; " +
              "; ".join(f"{g} {r['acc']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] chance {r['chance']:.3f} majority {r['majority']:.3f}"
                        for g, r in groups.items()), file=sys.stderr, flush=True)
    val = [json.loads(l) for l in (run/'metrics.jsonl').read_text().splitlines() if 'val_bpb' in l] if (run/'metrics.jsonl').is_file() else []
    last = curve[-1]['groups'] if curve else {}
    above = lambda lvl: sum(r['ci95'][0] > r[lvl] for r in last.values())
    nparams = sum(p.numel() for p in model.parameters())
    rec = write_record(f'run_curve_{a.preset}', dict(preset=a.preset, wall_s=f'{sum(secs.values()):.0f}', train_s=f"{secs['train']:.0f}",
                                                   tokens=tokens_at(sum(p.steps for p in ph)),
                                                   bpb_first=f"{curve[0]['mean_bpb']:.3f}" if curve else 'nan',
                                                   bpb_last=f"{curve[-1]['mean_bpb']:.3f}" if curve else 'nan',
                                                   groups_above_chance=above('chance'), groups_above_majority=above('majority')),
                       details=dict(stage_s=secs, peak_gb=round(peak, 2), params=nparams, bpb_source=source, curve=curve,
                                    val_bpb=[{k: v for k, v in m.items() if k in ('step', 'phase', 'val_bpb', 'tokens')} for m in val],
                                    data='COMPASS_DATA_DIR', eval=cfg.eval.to_dict()))
    print(rec['line'])

if __name__ == '__main__': main()
