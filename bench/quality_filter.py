"""What the model-based quality filter does to a small model: bits per byte on held-out text with and without it.

On the shared data (`COMPASS_DATA_DIR`, a seeded sample of `--docs` documents per source) the data stage runs twice:
without the filter, and with `quality_threshold=--threshold` (on the default per-language rank score, so every
language loses the same share of its lowest-scoring documents). One byte-level BPE, trained on the unfiltered
cleaned text, serves both runs. The same model (`--model`) then trains from the same seed for the same number of
steps and tokens (one phase, `--steps` × micro-batch 8 × seq 128) on each cleaned corpus, and is scored on the
held-out NTREX sentences (the first `--limit` per language; news, never in the corpus): bits per byte per language
and their mean. Ends by printing `quality_filter bpb_with=<x> bpb_without=<x> kept_pct=<x>` (kept_pct: the share of
the scored documents that the filter keeps) and writes `bench/results/quality_filter.json`.

    python bench/quality_filter.py [--docs 400] [--threshold 0.3] [--steps 60] [--model tiny] [--limit 50]

The defaults fit a shared 2-core machine in about a quarter of an hour; on a quiet one, `--docs 1500 --steps 400
--model laptop --limit 200` trains a model that has learnt more than byte statistics.
"""
import argparse, json, os, sys, tempfile, time
from pathlib import Path

def tokenizer(texts, vocab:int):
    "A throwaway byte-level BPE on `texts` (the same one for both runs)."
    from tokenizers import Tokenizer, models, trainers, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False); tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=['<|bos|>', '<|eos|>', '<|pad|>'],
                                                       show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token='<|bos|>', eos_token='<|eos|>', pad_token='<|pad|>')

def train_and_score(run_dir:Path, tok, a)->dict:
    "Train `a.model` on run_dir/data/clean for `a.steps` steps; bits per byte on NTREX."
    from compass_nbdev.train import train_config, run as train_run
    from compass_nbdev.model import CompassForCausalLM
    from compass_nbdev.evaluate import bits_per_byte
    phase = dict(name='pretrain', steps=a.steps, seq_len=128, lr=6e-3, warmup_steps=max(1, a.steps // 25), schedule='cosine', min_lr_ratio=0.1)
    cfg = train_config(a.model, model=a.model, micro_batch_size=8, phases=[phase], log_every=50, save_every=10**6, val_max_docs=2)
    s = train_run(cfg, run_dir, tok, run_dir/'data'/'clean', plots=False)
    model = CompassForCausalLM.from_pretrained(run_dir/'model').eval()
    r = bits_per_byte(model, tok, None, limit=a.limit, n_boot=200)
    return {'tokens': s['tokens'], 'mean_bpb': r['mean_bpb'], 'langs': {l: v['bpb'] for l, v in r['langs'].items()}}

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--docs', type=int, default=400); p.add_argument('--threshold', type=float, default=0.3)
    p.add_argument('--steps', type=int, default=60); p.add_argument('--model', default='tiny')
    p.add_argument('--limit', type=int, default=50); p.add_argument('--vocab', type=int, default=4096)
    a = p.parse_args()
    from compass_nbdev.core import resolve_data_dir, write_record
    from compass_nbdev.data import DataConfig, run as data_run, load_clean
    if resolve_data_dir(None) is None: sys.exit("quality_filter: needs the shared data: set COMPASS_DATA_DIR")
    import torch; torch.manual_seed(0)
    t0, tmp, res = time.perf_counter(), Path(tempfile.mkdtemp()), {}
    summ = {k: data_run(DataConfig(max_docs_per_source=a.docs, quality_threshold=t), tmp/k)
            for k, t in (('without', None), ('with', a.threshold))}
    tok = tokenizer(load_clean(tmp/'without'/'data'/'clean')['text'], a.vocab)
    for k in ('without', 'with'):
        res[k] = train_and_score(tmp/k, tok, a); print(k, json.dumps(res[k]), file=sys.stderr, flush=True)
    lowq = summ['with']['removed_by_reason'].get('low_quality', {'docs': 0})['docs']
    kept_pct = 100 * summ['with']['kept_docs'] / (summ['with']['kept_docs'] + lowq)
    rec = write_record('quality_filter', dict(bpb_with=f"{res['with']['mean_bpb']:.3f}", bpb_without=f"{res['without']['mean_bpb']:.3f}",
                                              kept_pct=f"{kept_pct:.1f}"),
                       details=dict(bpb_by_lang={l: {'with': round(res['with']['langs'][l], 4), 'without': round(res['without']['langs'][l], 4)}
                                                 for l in res['with']['langs']},
                                    tokens={k: res[k]['tokens'] for k in res}, threshold=a.threshold, scale='rank', docs_per_source=a.docs,
                                    model=a.model, steps=a.steps, ntrex_limit=a.limit, classifier=summ['with']['quality'],
                                    kept_docs={k: summ[k]['kept_docs'] for k in summ}, seconds=round(time.perf_counter() - t0)))
    print(rec['line'])

if __name__ == '__main__': main()
