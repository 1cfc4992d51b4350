"""Fast/deep reasoning benchmark: pretrain (or reuse) the laptop model, SFT it on mixed-mode data, evaluate both modes
on the e-commerce test splits, and time MoE vs dense decoding on this machine.

    python bench/reasoning.py DATA_DIR [--base RUN_DIR] [--limit 40] [--steps 600]

Ends with one line:
    reasoning deep_think_pct=<x> fast_no_think_pct=<x> moe_decode_tok_s=<x> dense_decode_tok_s=<x>
Writes bench/reasoning.json and bench/reasoning.png (see the reasoning notebook)."""
from __future__ import annotations
import argparse, json, os, platform, subprocess, sys, time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _measure_in_subprocess(name:str, prompt_len:int, new_tokens:int, repeats:int)->dict:
    "Time one laptop-scale model in a fresh process, so peak memory is its own."
    code = ("import json; from compass_nbdev.inference_cost import cost_configs, measure_inference; "
            f"print('RESULT', json.dumps(measure_inference(cost_configs('laptop')[{name!r}], {prompt_len}, {new_tokens}, repeats={repeats})))")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    line = next(l for l in out.stdout.splitlines() if l.startswith('RESULT '))
    return json.loads(line[7:])


def main(argv=None)->int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('data_dir', help="data directory with corpus/ and eval/sentiment/")
    p.add_argument('--base', default=None, help="reuse a pretrained run folder (RUN_DIR or RUN_DIR/model) instead of pretraining")
    p.add_argument('--work', default=None, help="working folder (default: runs/reasoning_bench, git-ignored)")
    p.add_argument('--limit', type=int, default=40, help="test items per task (each is answered in both modes)")
    p.add_argument('--train-per-task', type=int, default=600, help="SFT items per e-commerce task (train splits)")
    p.add_argument('--synthetic-per-lang', type=int, default=60, help="SFT items per language from the synthetic generator")
    p.add_argument('--steps', type=int, default=600, help="SFT optimizer steps")
    p.add_argument('--batch-size', type=int, default=4)
    p.add_argument('--seq-len', type=int, default=256)
    p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--prompt-len', type=int, default=256, help="prefill length for the speed test")
    p.add_argument('--new-tokens', type=int, default=64, help="decode steps for the speed test")
    p.add_argument('--skip-cost', action='store_true', help="skip the MoE vs dense timing")
    p.add_argument('--cost-json', default=None, help="reuse the MoE vs dense timings of an earlier run's JSON (implies --skip-cost)")
    p.add_argument('--threads', type=int, default=1, help="torch threads (1 is steadier and, on a busy machine, much faster)")
    p.add_argument('--out', default=str(HERE/'reasoning.json'))
    a = p.parse_args(argv)
    os.environ['OMP_NUM_THREADS'] = str(a.threads)       # also for the timing subprocesses
    import torch; torch.set_num_threads(a.threads)

    import logging
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s: %(message)s', datefmt='%H:%M:%S')
    from compass_nbdev.core import resolve_data_dir, atomic_write_json, md_table, portable_paths
    from compass_nbdev.sft import sentiment_items, synthetic_items, build_sft_examples, fine_tune, SFTConfig, load_chat_model
    from compass_nbdev.generate import eval_modes, modes_table
    from compass_nbdev.inference_cost import accounting_table, plot_cost
    data_dir = resolve_data_dir(a.data_dir)
    work = Path(a.work or HERE.parent/'runs'/'reasoning_bench'); work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    # 1. the pretrained base
    if a.base:
        base = Path(a.base); base = base/'model' if (base/'model'/'config.json').is_file() else base
    else:
        from compass_nbdev.cli import resolve_config, run_recipe
        cfg = resolve_config('laptop', None, {'data_dir': str(data_dir), 'name': 'reasoning_base'})
        run_recipe(cfg, work/'base', stages=['data', 'tokenizer', 'train'])
        base = work/'base'/'model'
    t_base = time.time() - t0

    # 2. SFT on both modes, several languages
    items = sentiment_items(data_dir, 'train', a.train_per_task) + synthetic_items(a.synthetic_per_lang, seed=0)
    ex = build_sft_examples(items, deep_frac=0.5, multi_turn_frac=0.15, seed=0)
    s = fine_tune(base, work/'sft', ex, SFTConfig(steps=a.steps, seq_len=a.seq_len, batch_size=a.batch_size, lr=a.lr,
                                            warmup_steps=min(20, a.steps // 10)))
    print(f"sft: {json.dumps({k: s[k] for k in ('examples', 'dropped', 'rows', 'target_tokens', 'seconds', 'final_lm_loss')})}")

    # 3. both modes on the test splits
    model, tok = load_chat_model(work/'sft')
    t = time.time()
    res = eval_modes(model, tok, sentiment_items(data_dir, 'test', a.limit, seed=1))
    t_eval = time.time() - t
    print(modes_table(res))

    # 4. inference cost: MoE vs dense (equal active) vs dense (equal total), each in a fresh process
    cpu = json.loads(Path(a.cost_json).read_text())['cpu'] if a.cost_json else {}
    if cpu: print(f"timings reused from {a.cost_json}")
    if not a.skip_cost and not a.cost_json:
        for name in ('moe', 'dense_active', 'dense_total'):
            cpu[name] = _measure_in_subprocess(name, a.prompt_len, a.new_tokens, repeats=2)
            print(f"{name}: {json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in cpu[name].items()})}")
    acc = accounting_table()
    print(md_table(acc, '{:.2f}'))

    load = os.getloadavg()
    out = dict(date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), machine=f"{platform.node()} {platform.machine()} "
               f"{os.cpu_count()} CPUs, torch threads {__import__('torch').get_num_threads()}",
               load=f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", base=str(base), base_seconds=round(t_base, 1),
               sft=s, eval_seconds=round(t_eval, 1), limit=a.limit, modes=res, cpu=cpu, accounting=acc, args=vars(a))
    atomic_write_json(a.out, portable_paths(out))   # no absolute path of this machine in the repository
    if cpu:
        import matplotlib; matplotlib.use('Agg')
        fig = plot_cost(cpu, acc); fig.savefig(Path(a.out).with_suffix('.png'), dpi=80)
    o = res['overall']
    md, dd = (cpu.get('moe', {}).get('decode_tok_s', float('nan')), cpu.get('dense_active', {}).get('decode_tok_s', float('nan')))
    from compass_nbdev.core import write_record
    rec = write_record('reasoning', dict(deep_think_pct=f"{o['deep_think_pct']:.1f}", fast_no_think_pct=f"{o['fast_no_think_pct']:.1f}",
                                         moe_decode_tok_s=f'{md:.1f}', dense_decode_tok_s=f'{dd:.1f}'), args=vars(a))
    print(rec['line'])
    return 0


if __name__ == '__main__':
    sys.exit(main())
