"""Training throughput of the `laptop` preset on CPU: the MoE model and its dense counterpart, through `train.run`.

Each model trains in its own subprocess (so each peak RSS is its own) for `--steps` optimizer steps of the laptop
recipe's first phase (micro-batch 8 × seq 128, 2 CPU threads by default), on the embedded synthetic corpus with a
throwaway byte-level BPE; the model vocabulary is padded to the laptop tokenizer's 16384 tokens so the output layer
costs what it will in `compass run`. tokens/s is taken from metrics.jsonl after the first logged interval (warm-up).
Ends by printing `train_cpu moe_tokens_per_s=<x> dense_tokens_per_s=<x> peak_mb=<x>` (peak_mb: the MoE run's peak RSS).

    python bench/train_cpu.py [--steps 12] [--threads 2] [--vocab 16384]
"""
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path

def one(preset:str, steps:int, vocab:int, out:Path):
    "Train `preset` for `steps` steps into `out`; print a JSON line with tokens/s and peak RSS."
    import resource, torch
    from tokenizers import Tokenizer, models, trainers, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast
    from compass_nbdev.synthetic import synthetic_corpus
    from compass_nbdev.train import train_config, run as train_run, read_metrics
    data = synthetic_corpus(150, ['en', 'id', 'ms', 'th', 'vi', 'tl', 'zh'], seed=0)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False); tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([d['text'] for d in data], trainers.BpeTrainer(vocab_size=4096, special_tokens=['<|bos|>', '<|eos|>', '<|pad|>'],
                                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token='<|bos|>', eos_token='<|eos|>', pad_token='<|pad|>')
    lap = train_config('laptop')
    st = {**lap.phases[0].to_dict(), 'steps': steps, 'warmup_steps': 2}
    cfg = train_config('laptop', model=preset, model_overrides={'vocab_size': vocab}, phases=[st], log_every=2, save_every=10**6)
    c0 = time.process_time()
    s = train_run(cfg, out, tok, data, plots=False)
    cpu = time.process_time() - c0                                     # CPU seconds of all threads (load-independent-ish)
    recs = read_metrics(out/'metrics.jsonl')[1:]                      # drop the warm-up interval
    toks = sum(r['tokens'] - p['tokens'] for p, r in zip(read_metrics(out/'metrics.jsonl'), recs))
    secs = sum((r['tokens'] - p['tokens']) / r['tokens_per_s'] for p, r in zip(read_metrics(out/'metrics.jsonl'), recs))
    print('RESULT', json.dumps(dict(preset=preset, tokens_per_s=toks / secs, peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                    final_loss=s['final_loss'], threads=torch.get_num_threads(),
                                    cpu_s_per_1k_tokens=1000 * cpu / s['tokens'], tokens=s['tokens'])), flush=True)

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--steps', type=int, default=12); p.add_argument('--threads', type=int, default=2)
    p.add_argument('--vocab', type=int, default=16384); p.add_argument('--one')
    a = p.parse_args()
    if a.one:
        import torch; torch.set_num_threads(a.threads)
        return one(a.one, a.steps, a.vocab, Path(tempfile.mkdtemp())/'run')
    res = {}
    for preset in ('laptop', 'laptop-dense'):
        r = subprocess.run([sys.executable, __file__, '--one', preset, '--steps', str(a.steps), '--threads', str(a.threads),
                            '--vocab', str(a.vocab)], capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': str(a.threads)})
        if r.returncode: sys.exit(r.stderr[-3000:])
        res[preset] = json.loads(r.stdout.split('RESULT', 1)[1])
        print(preset, res[preset], file=sys.stderr)
    from compass_nbdev.core import write_record
    rec = write_record('train_cpu', dict(moe_tokens_per_s=f"{res['laptop']['tokens_per_s']:.0f}",
                                         dense_tokens_per_s=f"{res['laptop-dense']['tokens_per_s']:.0f}",
                                         peak_mb=f"{res['laptop']['peak_mb']:.0f}"), args=vars(a))
    print(rec['line'])

if __name__ == '__main__': main()
