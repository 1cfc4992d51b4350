"""Time the whole recipe, `compass run`, stage by stage, in a temporary run folder.

    python bench/compass_run.py [--preset laptop] [--data-dir DIR]     # default: $COMPASS_DATA_DIR, else synthetic

Runs data → tokenizer → train → eval (what `compass run` runs) and ends with
`compass_run wall_s= peak_gb= mean_bpb=` (wall seconds of the four stages, the largest resident memory of the
process, the mean bits per byte of the evaluation); the record `bench/results/compass_run.json` keeps the seconds
of each stage too (`compass_run_synthetic` on the synthetic corpus). The target (issue 1): under 10 minutes at laptop scale on 2 cores.
"""
import argparse, os, resource, sys, tempfile, time
from pathlib import Path

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
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # kB → GB
    real = data_dir != SYNTHETIC
    rec = write_record('compass_run' if real else 'compass_run_synthetic', dict(wall_s=f'{sum(secs.values()):.0f}', peak_gb=f'{peak:.2f}',
                                           mean_bpb=f"{out['eval']['mean_bpb']:.3f}"),
                       details=dict(stage_s=secs, preset=a.preset, data='COMPASS_DATA_DIR' if real else SYNTHETIC))
    print(rec['line'])

if __name__ == '__main__': main()
