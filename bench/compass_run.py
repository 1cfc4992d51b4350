"""Time the whole recipe, `compass run`, stage by stage, in a temporary run folder.

    python bench/compass_run.py [--preset laptop] [--data-dir DIR]     # default: $COMPASS_DATA_DIR, else synthetic

Runs data → tokenizer → train → eval (what `compass run` runs) and ends with
`compass_run wall_s= peak_gb= mean_bpb=` (wall seconds of the four stages, the largest resident memory of the
process, the mean bits per byte of the evaluation); the record `bench/results/compass_run.json` keeps the seconds
of each stage too (`compass_run_synthetic` on the synthetic corpus), and each task group's accuracy pooled over its
languages with a 95% interval, chance and majority levels. The target (issue 1): under 10 minutes at laptop scale on 2 cores.
"""
import argparse, os, resource, sys, tempfile, time
from pathlib import Path

def task_groups(path:Path)->dict:
    "Accuracy pooled over the tasks of each group (e.g. synthetic_rating over 9 languages), its Wilson 95% interval, mean chance and majority levels."
    import json
    from compass_nbdev.evaluate import wilson_interval
    rows, out = json.loads(path.read_text()) if path.is_file() else [], {}
    for g in sorted({r['group'] for r in rows}):
        rs = [r for r in rows if r['group'] == g]; n = sum(r['n'] for r in rs); k = round(sum(r['acc'] * r['n'] for r in rs))
        out[g] = dict(tasks=len(rs), n=n, acc=k / n, ci95=list(wilson_interval(k, n)),
                      chance=sum(r['chance'] for r in rs) / len(rs), majority=sum(r['majority'] for r in rs) / len(rs))
    return out

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--preset', default='laptop'); ap.add_argument('--data-dir', default=None)
    a = ap.parse_args()
    from compass_nbdev.core import resolve_data_dir, write_record, SYNTHETIC
    from compass_nbdev.cli import resolve_config, run_recipe, STAGES
    data_dir = str(resolve_data_dir(a.data_dir) or SYNTHETIC)
    cfg = resolve_config(a.preset, None, {'data_dir': data_dir, 'name': 'bench_compass_run'})
    secs, out = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for stage in STAGES:
            t = time.perf_counter()
            out.update(run_recipe(cfg, Path(tmp)/'run', stages=[stage]))
            secs[stage] = round(time.perf_counter() - t, 1)
            print(f"{stage}: {secs[stage]} s", file=sys.stderr, flush=True)
        tasks = task_groups(Path(tmp)/'run'/'eval'/'tasks.json')
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # kB → GB
    real = data_dir != SYNTHETIC
    rec = write_record('compass_run' if real else 'compass_run_synthetic', dict(wall_s=f'{sum(secs.values()):.0f}', peak_gb=f'{peak:.2f}',
                                           mean_bpb=f"{out['eval']['mean_bpb']:.3f}"),
                       details=dict(stage_s=secs, preset=a.preset, data='COMPASS_DATA_DIR' if real else SYNTHETIC, tasks=tasks))
    for g, r in tasks.items(): print(f"{g}: accuracy {r['acc']:.3f} (95% {r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}) on {r['n']} items, "
                                     f"chance {r['chance']:.3f}, majority {r['majority']:.3f}", file=sys.stderr)
    print(rec['line'])

if __name__ == '__main__': main()
