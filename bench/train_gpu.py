"""Training throughput and MFU of the `gpu-small` preset on one GPU, through `train.run` (issue 6).

Runs `--steps` optimizer steps of gpu-small's first phase (micro-batch 32 x 1024 tokens x 4 accumulation steps, bf16
autocast, fused AdamW, the Triton experts that `moe_impl='auto'` picks on CUDA) on the embedded synthetic corpus with a
throwaway byte-level BPE (the model's vocabulary is padded to the preset's 32768, so the output layer costs what it
will). Medians over the steps after `--warmup`. MFU = model_stats' train FLOPs/token x tokens/s / peak dense bf16
FLOP/s (`compass_nbdev.train.peak_flops`; set COMPASS_PEAK_FLOPS for a GPU it does not know).
Ends by printing one line: `train_gpu gpu=<name> mfu_pct=<x> tokens_per_s=<x> peak_mb=<x>`.
Without CUDA it says so and exits with status 0.

    python bench/train_gpu.py [--steps 20] [--warmup 5] [--preset gpu-small] [--micro-batch N] [--grad-accum N]
"""
import argparse, json, sys

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--steps', type=int, default=20); p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--preset', default='gpu-small')
    p.add_argument('--micro-batch', type=int, default=None, help="override micro_batch_size (e.g. if memory runs out)")
    p.add_argument('--grad-accum', type=int, default=None, help="override grad_accum")
    p.add_argument('--moe-impl', default=None, help="override the model's moe_impl (auto|grouped|triton|loop)")
    a = p.parse_args()
    import torch
    if not torch.cuda.is_available():
        print("train_gpu: no CUDA device here; nothing measured (run this on a GPU machine)")
        return 0
    from tokenizers import Tokenizer, models, trainers, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast
    from compass_nbdev.synthetic import synthetic_corpus
    from compass_nbdev.train import measure_throughput
    data = synthetic_corpus(300, ['en', 'id', 'ms', 'th', 'vi', 'tl', 'zh'], seed=0)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False); tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([d['text'] for d in data], trainers.BpeTrainer(vocab_size=2000, special_tokens=['<|bos|>', '<|eos|>', '<|pad|>'],
                                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token='<|bos|>', eos_token='<|eos|>', pad_token='<|pad|>')
    over = {}
    if a.micro_batch: over['micro_batch_size'] = a.micro_batch
    if a.grad_accum: over['grad_accum'] = a.grad_accum
    if a.moe_impl: over['model_overrides'] = {'moe_impl': a.moe_impl}
    r = measure_throughput(tok, a.preset, steps=a.steps, warmup=a.warmup, data=data, **over)
    print(json.dumps(r), file=sys.stderr)
    from compass_nbdev.core import write_record
    mfu = f"{100 * r['mfu']:.1f}" if r['mfu'] is not None else 'nan'
    rec = write_record('train_gpu', dict(gpu=r['device'].replace(' ', '_'), mfu_pct=mfu, tokens_per_s=f"{r['tokens_per_s']:.0f}",
                                         peak_mb=f"{r['peak_mb']:.0f}"), args=vars(a))
    print(rec['line'])
    return 0

if __name__ == '__main__': sys.exit(main())
