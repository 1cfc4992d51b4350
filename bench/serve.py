"""Inference cost under a real engine: requests/s and output tokens/s through vLLM's OpenAI-compatible server
(`compass serve`, compass_nbdev.serve) at concurrency 1, 8 and 32, against our own loop (`compass generate`'s
`generate.generate_ids`, batches of 16 as the command does) on the same prompts, for the MoE and its dense twin.

The models are the `--preset` shapes with random weights (speed does not depend on what the weights learned): the MoE,
and its dense twin, a dense SwiGLU of width (k + shared) x expert width (`bench/moe_vs_dense.py`'s
`dense_twin_overrides`), so the active parameters match. With `--layout compass` (the default) both are served
natively by our vLLM plugin (compass_nbdev.vllm_model), the MoE as the preset has it (its shared experts included).
With `--layout qwen3_moe` (the earlier measurement) the MoE has no shared experts so that it exports to Qwen3-MoE, and
the twin is written in the Qwen3 (dense) layout here (the converter exports MoE models only; a dense Compass model with
per-head QK-norm is exactly Qwen3) from the converter's own pieces, checked against the Compass model's logits in
transformers. Prompts: chat-formatted synthetic e-commerce questions (fast mode); every request
decodes exactly `--new-tokens` tokens (stop tokens ignored on both sides). vLLM runs with `--enforce-eager` (its
compile warm-up costs minutes on 2 CPUs) and `VLLM_CPU_KVCACHE_SPACE=1`.

Prints `serve moe_tok_s=<x> dense_tok_s=<x> vs_generate=<x>` (tokens/s at the highest concurrency; vs_generate = the
MoE's server tokens/s over our loop's on the same prompts; each figure is the median of `--repeats` timed passes, since one
pass at 32 in flight lasts under a second and single passes varied threefold here) and writes bench/results/serve.json (every concurrency,
both models, startup times, commit, date, machine, load).

    python bench/serve.py [--preset laptop] [--layout compass|qwen3_moe] [--prompts 32] [--new-tokens 32] [--concurrency 1,8,32] [--repeats 7] [--out DIR]
"""
import argparse, json, socket, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from compass_nbdev.core import time_calls, median_ms


def free_port()->int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def build(out:Path, preset:str, layout:str='compass')->dict:
    "The tokenizer, the MoE and its dense twin (random weights), saved as Compass models: {name: folder}."
    import torch
    from compass_nbdev.model import CompassConfig, CompassForCausalLM
    from compass_nbdev.sft import with_chat_template, save_model_dir
    from compass_nbdev.tokenizer import train_bpe, to_hf
    from compass_nbdev.synthetic import synthetic_corpus
    sys.path.insert(0, str(Path(__file__).parent))
    from moe_vs_dense import dense_twin_overrides
    tok = with_chat_template(to_hf(train_bpe([d['text'] for d in synthetic_corpus(40)], 2000)))
    moe_ov = dict(vocab_size=-(-len(tok) // 64) * 64, **({} if layout == 'compass' else dict(n_shared_experts=0)))
    cfgs = {'moe': CompassConfig.from_preset(preset, **moe_ov),
            'dense': CompassConfig.from_preset(f'{preset}-dense', **dense_twin_overrides(preset, moe_ov))}
    dirs = {}
    for name, c in cfgs.items():
        torch.manual_seed(0)
        dirs[name] = save_model_dir(CompassForCausalLM(c).eval(), tok, out/name/'model')
    return dirs


def export_dense(src:Path, dst:Path)->float:
    "Write a dense Compass model in the Qwen3 (dense) layout; returns the max |logit difference| in transformers."
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM
    from compass_nbdev.core import atomic_dir
    from compass_nbdev.convert import _hf_config, hf_state_dict, copy_side_files
    from compass_nbdev.model import CompassForCausalLM
    from compass_nbdev.serve import serving_files
    m = CompassForCausalLM.from_pretrained(src).eval()
    hf = {**_hf_config(m.config, 'qwen3_moe'), 'dtype': 'float32', 'model_type': 'qwen3', 'architectures': ['Qwen3ForCausalLM']}
    assert hf['num_experts'] == 0 and m.config.qk_norm == 'head'   # every layer dense; Qwen3 normalises q, k per head
    with atomic_dir(dst) as tmp:
        save_file(hf_state_dict(m.state_dict(), m.config, 'qwen3_moe'), tmp/'model.safetensors', metadata={'format': 'pt'})
        (tmp/'config.json').write_text(json.dumps(hf, indent=2))
        copy_side_files(src, tmp)
    serving_files(dst)
    x = torch.randint(10, m.config.vocab_size, (2, 24))
    with torch.no_grad():
        return float((AutoModelForCausalLM.from_pretrained(dst).eval()(x).logits - m(x).logits).abs().max())


def prompts(tok, n:int)->list[list[int]]:
    "Token ids of `n` chat-formatted user questions (fast mode), from the synthetic e-commerce corpus."
    from compass_nbdev.sft import encode_chat
    from compass_nbdev.synthetic import synthetic_corpus
    docs = [d['text'] for d in synthetic_corpus(max(2, n // 8 + 1))][:n]
    return [encode_chat(tok, [{'role': 'user', 'content': 'Summarise this review: ' + d[:200]}], False, True)['input_ids'] for d in docs]


def time_generate(model_dir:Path, ps:list, new:int, batch:int=16, repeats:int=1)->dict:
    "Our loop (`generate_ids`, stop tokens off) over the prompts in batches: tokens/s and requests/s (the median of `repeats` passes)."
    from compass_nbdev.generate import generate_ids
    from compass_nbdev.sft import load_chat_model
    import torch
    torch.set_num_threads(1)   # as vLLM's CPU worker runs (it keeps the other core for its API server); steadier on a shared CPU
    model, tok = load_chat_model(model_dir, 'cpu')
    generate_ids(model, ps[:2], 2, pad_id=tok.pad_token_id)                       # warm-up
    def once():
        return sum(sum(map(len, generate_ids(model, ps[i:i+batch], new, stop_ids=(), pad_id=tok.pad_token_id)[0]))
                   for i in range(0, len(ps), batch))
    return {**timed_passes(once, len(ps), repeats), 'batch': batch}


def timed_passes(once, requests:int, repeats:int)->dict:
    "Time `once` (a pass that returns the tokens it produced) `repeats` times with `core.time_calls`: the median pass."
    toks = []
    ts = time_calls({'pass': lambda: toks.append(once())}, rounds=repeats)['pass']['wall']
    assert len(set(toks)) == 1, f"passes produced different token counts: {toks}"   # every request decodes exactly `new` tokens
    s = median_ms(ts) / 1e3
    return dict(tok_s=toks[0] / s, req_s=requests / s, seconds=s, tokens=toks[0], repeats=repeats,
                tok_s_all=sorted(round(t / x, 1) for t, x in zip(toks, ts)))


def time_server(url:str, ps:list, new:int, conc:int, repeats:int=1)->dict:
    "All prompts through `/v1/completions`, `conc` requests in flight at a time: tokens/s and requests/s (the median of `repeats` passes)."
    from compass_nbdev.serve import post_json
    def one(p):
        st, r = post_json(url, '/v1/completions', dict(model='compass', prompt=p, max_tokens=new, temperature=0, ignore_eos=True))
        assert st == 200, r
        return r['usage']['completion_tokens']
    def once():
        with ThreadPoolExecutor(conc) as ex: return sum(ex.map(one, ps))
    return timed_passes(once, len(ps), repeats)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--preset', default='laptop', help="model shape ('laptop'; 'tiny' is too small for vLLM's CPU attention)")
    ap.add_argument('--layout', default='compass', choices=('compass', 'qwen3_moe'),
                    help="compass: both models natively (our vLLM plugin); qwen3_moe: exported (the MoE without shared experts)")
    ap.add_argument('--prompts', type=int, default=32)
    ap.add_argument('--new-tokens', type=int, default=32)
    ap.add_argument('--concurrency', default='1,8,32')
    ap.add_argument('--repeats', type=int, default=7, help='timed passes per measurement; the median is reported (one pass at 32 in flight lasts under a second)')
    ap.add_argument('--out', default=None, help='work folder (default: a temporary one)')
    ap.add_argument('--results', default=str(Path(__file__).parent/'results'), help='where serve.json is written')
    a = ap.parse_args(argv)
    import os, torch
    from compass_nbdev.core import write_record
    from compass_nbdev.serve import start_server
    from compass_nbdev.sft import load_chat_model
    out, conc = Path(a.out or tempfile.mkdtemp(prefix='bench_serve_')), [int(c) for c in a.concurrency.split(',')]
    dirs = build(out, a.preset, a.layout)
    native = a.layout == 'compass'
    dense_diff = None if native else export_dense(dirs['dense'], out/'dense'/'serve'/'qwen3_dense')
    ps = prompts(load_chat_model(dirs['moe'], 'cpu')[1], a.prompts)
    res = {'generate': {}, 'server': {}, 'startup_s': {}}
    for name in ('moe', 'dense'):
        res['generate'][name] = time_generate(dirs[name], ps, a.new_tokens, repeats=a.repeats)
        print(f"{name}: compass generate {res['generate'][name]['tok_s']:.1f} tok/s (passes: {res['generate'][name]['tok_s_all']})", file=sys.stderr, flush=True)
        target = dirs[name] if native or name == 'moe' else out/'dense'/'serve'/'qwen3_dense'
        srv = start_server(target, port=free_port(), layout=a.layout, extra=['--enforce-eager'], log_path=out/f'vllm_{name}.log')
        t0 = time.perf_counter(); srv.start()
        try:
            srv.wait_ready(1200); res['startup_s'][name] = time.perf_counter() - t0
            time_server(srv.url, ps[:2], 2, 1)                                       # warm-up
            res['server'][name] = {c: time_server(srv.url, ps, a.new_tokens, c, a.repeats) for c in conc}
        finally: srv.stop()
        for c, r in res['server'][name].items(): print(f"{name}: server c={c} {r['tok_s']:.1f} tok/s {r['req_s']:.2f} req/s (passes: {r['tok_s_all']})", file=sys.stderr, flush=True)
    top = max(conc)
    moe, dense = res['server']['moe'][top]['tok_s'], res['server']['dense'][top]['tok_s']
    rec = write_record('serve', dict(moe_tok_s=f"{moe:.1f}", dense_tok_s=f"{dense:.1f}", vs_generate=f"{moe / res['generate']['moe']['tok_s']:.2f}"),
                       path=Path(a.results)/'serve.json',
                       details=dict(concurrency=top, repeats=a.repeats, preset=a.preset, layout=a.layout, prompts=len(ps), new_tokens=a.new_tokens,
                                    moe_shared_experts=json.loads((dirs['moe']/'config.json').read_text())['n_shared_experts'],
                                    dense_vs_generate=dense / res['generate']['dense']['tok_s'],
                                    server={n: {str(c): r for c, r in d.items()} for n, d in res['server'].items()},
                                    generate=res['generate'], startup_s=res['startup_s'], dense_export_max_abs_diff=dense_diff,
                                    torch_threads=torch.get_num_threads(), vllm='--enforce-eager, VLLM_CPU_KVCACHE_SPACE=1'))
    print(rec['line'])
    return 0


if __name__ == '__main__':   # vLLM's server is a child process; the guard keeps a spawned child from re-running this
    sys.exit(main())
