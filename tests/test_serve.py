"""`compass serve` (compass_nbdev.serve): a real vLLM server on loopback, on a small trained model, asked with the
`openai` client and with plain HTTP.

One server for the module (starting one takes a minute or more on 2 CPUs). The model: `compass run --preset tiny`
shaped as the presets are (two shared experts, per-head QK-norm, an untied output head) with `head_dim=32` (vLLM's CPU
attention has no kernel for 16), then `compass sft`. No released layout holds that shape, so it is served natively,
through our vLLM plugin (compass_nbdev.vllm_model). Skipped, saying why, only where vLLM is not installed
(`bash tools/install_vllm.sh`). For quicker iterations a developer may point COMPASS_TEST_SERVE_RUN at a
run folder made by the same commands; the module then reuses it instead of training.
"""
import json, os, shutil, socket, subprocess, sys, time
from pathlib import Path
import pytest
from compass_nbdev.core import CompassError
from compass_nbdev.serve import (find_vllm_python, start_server, chat_body, post_json, live_processes, check_port,
                                 prepare_model)
from compass_nbdev.sft import load_chat_model, encode_chat

try: VLLM = find_vllm_python(Path(__file__).parent)
except CompassError as e: VLLM, WHY = None, str(e)
needs_vllm = pytest.mark.skipif(VLLM is None, reason=f"vLLM cannot be used here: {WHY if VLLM is None else ''}")

MODEL = "{head_dim: 32, n_shared_experts: 2, tie_word_embeddings: false}"
SFT = ['--set', 'sft.steps=60', '--set', 'sft.lr=0.005', '--set', 'sft.batch_size=4', '--set', 'sft.seq_len=256',
       '--set', 'sft.warmup_steps=6', '--set', 'sft.n_per_task=20']   # seq_len 256 keeps the deep examples (128 drops most)
PROMPTS = ['Is this review positive? "Great phone, fast delivery"', 'Apa kabar?', 'Xin chào, bạn khỏe không?',
           'Rate this review from 1 to 5: the box was broken', 'สวัสดีครับ']
NEW = 16


def compass(*args, timeout=1800):
    exe = shutil.which('compass') or str(Path(sys.executable).parent/'compass')
    return subprocess.run([exe, *map(str, args)], capture_output=True, timeout=timeout, text=True)


def free_port()->int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    if os.environ.get('COMPASS_TEST_SERVE_RUN'): return Path(os.environ['COMPASS_TEST_SERVE_RUN'])
    d = tmp_path_factory.mktemp('serve')/'run'
    r = compass('run', '--preset', 'tiny', '--run-dir', d, '--set', f'train.model_overrides={MODEL}')
    assert r.returncode == 0, r.stderr[-3000:]
    r = compass('sft', '--run-dir', d, *SFT)
    assert r.returncode == 0, r.stderr[-3000:]
    return d


@pytest.fixture(scope='module')
def server(run_dir, tmp_path_factory):
    srv = start_server(run_dir, port=free_port(), extra=['--enforce-eager'], log_path=tmp_path_factory.mktemp('vllm')/'vllm.log')
    srv.start().wait_ready(900)
    yield srv
    srv.stop()


@pytest.fixture(scope='module')
def ours(run_dir, tmp_path_factory):
    "`compass generate`'s greedy replies to PROMPTS in both modes: {mode: [record, ...]}."
    d = tmp_path_factory.mktemp('gen')
    recs = [{'prompt': p, 'mode': m} for m in ('fast', 'deep') for p in PROMPTS]
    (d/'p.jsonl').write_text('\n'.join(json.dumps(r, ensure_ascii=False) for r in recs) + '\n', encoding='utf-8')
    r = compass('generate', d/'p.jsonl', '--out', d/'o.jsonl', '--run-dir', run_dir, '--max-new-tokens', NEW)
    assert r.returncode == 0, r.stderr[-3000:]
    out = [json.loads(l) for l in (d/'o.jsonl').read_text(encoding='utf-8').splitlines()]
    return {m: [o for o in out if o['mode'] == m] for m in ('fast', 'deep')}


def served(server, prompt, mode):
    status, r = post_json(server.url, '/v1/chat/completions', chat_body([{'role': 'user', 'content': prompt}], mode, NEW))
    assert status == 200, r
    return r


# ---- refusals before any server starts (no vLLM needed for most) ---------------------------------------------------
def test_cli_refuses_a_folder_without_a_model(tmp_path):
    r = compass('serve', tmp_path, '--port', free_port(), timeout=300)
    assert r.returncode == 2 and 'compass: error: ' in r.stderr and 'no model here' in r.stderr and 'Traceback' not in r.stderr, r.stderr


def test_cli_refuses_a_taken_port(tmp_path):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); s.listen(); port = s.getsockname()[1]
        r = compass('serve', tmp_path, '--port', port, timeout=300)
    assert r.returncode == 2 and f'--port: cannot listen on 127.0.0.1:{port}' in r.stderr, r.stderr


def test_refusals_name_the_setting(tmp_path):
    """The tiny preset's head_dim 16 has no vLLM CPU kernel; its shared expert and QK-norm fit no released layout; a
    capacity factor would make replies depend on the batch: each refused, naming the setting."""
    from compass_nbdev.model import CompassConfig, CompassForCausalLM
    CompassForCausalLM(CompassConfig.from_preset('tiny')).save_pretrained(tmp_path/'m')
    with pytest.raises(CompassError, match='head_dim: head_dim=16'):
        start_server(tmp_path/'m', port=free_port(), log_path=tmp_path/'log')
    CompassForCausalLM(CompassConfig.from_preset('tiny', head_dim=32)).save_pretrained(tmp_path/'m2')
    with pytest.raises(CompassError, match='n_shared_experts.*qk_norm'): prepare_model(tmp_path/'m2', 'auto')
    CompassForCausalLM(CompassConfig.from_preset('tiny', head_dim=32, capacity_factor=1.25)).save_pretrained(tmp_path/'m3')
    with pytest.raises(CompassError, match='capacity_factor: 1.25'): prepare_model(tmp_path/'m3')


# ---- the server --------------------------------------------------------------------------------------------------
@needs_vllm
@pytest.mark.slow
def test_served_natively_by_our_plugin(server):
    "The served folder is the Compass model itself (no export) and vLLM built our architecture for it."
    model_dir = Path(server.cmd[server.cmd.index('--model') + 1])
    cfg = json.loads((model_dir/'config.json').read_text())
    assert model_dir.name == 'sft_compass' and cfg['model_type'] == 'compass' and cfg['n_shared_experts'] == 2, cfg
    assert cfg['qk_norm'] == 'head' and not cfg['tie_word_embeddings'], cfg
    assert 'Resolved architecture: CompassForCausalLM' in server.log_path.read_text()


@needs_vllm
@pytest.mark.slow
def test_openai_client(server):
    from openai import OpenAI
    client = OpenAI(base_url=server.url + '/v1', api_key='none', timeout=300)
    assert [m.id for m in client.models.list().data] == ['compass']
    r = client.chat.completions.create(model='compass', messages=[{'role': 'user', 'content': PROMPTS[0]}], max_tokens=NEW,
                                       temperature=0, extra_body={'chat_template_kwargs': {'enable_thinking': False}})
    c = r.choices[0]
    assert c.finish_reason in ('stop', 'length') and r.usage.completion_tokens >= 1 and isinstance(c.message.content, str)


@needs_vllm
@pytest.mark.slow
def test_plain_http_completion(server):
    status, r = post_json(server.url, '/v1/completions', dict(model='compass', prompt='Harga barang ini', max_tokens=5, temperature=0,
                                                              ignore_eos=True))
    assert status == 200 and isinstance(r['choices'][0]['text'], str), r
    assert r['usage']['completion_tokens'] == 5 and r['choices'][0]['finish_reason'] == 'length', r


@needs_vllm
@pytest.mark.slow
@pytest.mark.parametrize('mode', ['fast', 'deep'])
def test_prompt_tokens_equal_our_template(server, run_dir, mode):
    "vLLM renders our chat template with the switch and tokenizes it to exactly our `encode_chat` ids."
    _, tok = load_chat_model(run_dir/'sft', 'cpu')
    for p in PROMPTS:
        ids = encode_chat(tok, [{'role': 'user', 'content': p}], mode == 'deep', add_generation_prompt=True)['input_ids']
        assert served(server, p, mode)['prompt_token_ids'] == ids, p


@needs_vllm
@pytest.mark.slow
@pytest.mark.parametrize('mode', ['fast', 'deep'])
def test_greedy_equals_compass_generate(server, ours, mode):
    for o in ours[mode]:
        r = served(server, o['messages'][-1]['content'], mode)['choices'][0]
        assert r['message']['content'] == o['text'], (mode, o['messages'], o['text'], r['message']['content'])
        assert len(r['token_ids']) == o['new_tokens'] + (r['finish_reason'] == 'stop'), r   # vLLM counts the stop token


@needs_vllm
@pytest.mark.slow
def test_switch_reaches_the_model_and_think_blocks_match_our_loop(server, run_dir, ours):
    """The deep and fast prompts differ exactly in the template's "Reasoning: deep|fast" line, and a served reply opens
    (and closes) a think block exactly when our loop's does. (A tiny model trained in test time does not reliably
    follow the switch, so "deep always opens a think block" is a property of a better-trained model, not asserted here.)"""
    _, tok = load_chat_model(run_dir/'sft', 'cpu')
    for o_fast, o_deep in zip(ours['fast'], ours['deep']):
        p = o_fast['messages'][-1]['content']
        r = {m: served(server, p, m) for m in ('fast', 'deep')}
        text = {m: tok.decode(r[m]['prompt_token_ids']) for m in r}
        assert text['deep'] == text['fast'].replace('Reasoning: fast', 'Reasoning: deep') != text['fast'], text
        for m, o in (('fast', o_fast), ('deep', o_deep)):
            content = r[m]['choices'][0]['message']['content']
            assert ('<think>' in content, '</think>' in content.split('<think>', 1)[-1] if '<think>' in content else False) == \
                   (o['think_open'], o['think_closed']), (m, p, content, o['text'])


@needs_vllm
@pytest.mark.slow
def test_deep_mode_raises_the_odds_of_a_think_block(server, run_dir):
    """What the switch does to the model, through /v1/chat/completions: the log-probability that the reply opens with
    `<think>` (vLLM's raw log-probability, the one token allowed) equals our model's in each mode, and deep mode
    raises it over fast on average over the prompts (SFT trains deep replies to open a think block, fast ones not to).
    The template pre-fills nothing after `<|im_start|>assistant`, so opening the block is the model's own choice; at
    the test's tiny scale it raises the odds without making `<think>` the greedy token, so a greedy "deep opens a think
    block" is not asserted here."""
    import torch
    model, tok = load_chat_model(run_dir/'sft', 'cpu')
    think = tok.convert_tokens_to_ids('<think>')
    lp = {'fast': [], 'deep': []}
    for p in PROMPTS:
        for mode in lp:
            body = chat_body([{'role': 'user', 'content': p}], mode, 1, allowed_token_ids=[think], logprobs=True)
            status, r = post_json(server.url, '/v1/chat/completions', body)
            assert status == 200, r
            got = r['choices'][0]['logprobs']['content'][0]
            ids = encode_chat(tok, [{'role': 'user', 'content': p}], mode == 'deep', add_generation_prompt=True)['input_ids']
            with torch.no_grad(): ours = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)[think].item()
            assert got['token'] == '<think>' and abs(got['logprob'] - ours) < 1e-4, (p, mode, got, ours)
            lp[mode].append(got['logprob'])
    assert sum(lp['deep']) > sum(lp['fast']), lp


@needs_vllm
@pytest.mark.slow
@pytest.mark.parametrize('body,status,needle', [
    ({'messages': 'hello'}, 400, 'messages'),                                               # not a list
    ({'messages': [{'role': 'robot', 'content': 'x'}]}, 400, 'unknown role robot'),          # our template refuses
    ({'messages': [{'role': 'user', 'content': 'x'}], 'max_tokens': 10**6}, 400, 'max_tokens'),
    ({'messages': [{'role': 'user', 'content': 'x'}], 'model': 'gpt-4'}, 404, 'does not exist'),
])
def test_malformed_requests_get_4xx_with_a_message(server, body, status, needle):
    got, r = post_json(server.url, '/v1/chat/completions', {'model': 'compass', 'max_tokens': 4, **body})
    assert got == status and needle in r['error']['message'], (got, r)


@needs_vllm
@pytest.mark.slow
def test_export_layout_still_serves(run_dir, tmp_path):
    """The other path: a model that fits Qwen3-MoE (no shared expert), exported and served by vLLM's own Qwen3-MoE
    (no plugin involved), answers as our loop does. Random weights, the run's tokenizer."""
    import torch
    from compass_nbdev.generate import generate
    from compass_nbdev.model import CompassConfig, CompassForCausalLM
    from compass_nbdev.sft import save_model_dir
    _, tok = load_chat_model(run_dir/'sft', 'cpu')
    torch.manual_seed(0)
    model = CompassForCausalLM(CompassConfig.from_preset('tiny', vocab_size=-(-len(tok) // 64) * 64, head_dim=32,
                                                         n_shared_experts=0, initializer_range=0.2)).eval()
    save_model_dir(model, tok, tmp_path/'m')
    convs = [[{'role': 'user', 'content': p}] for p in PROMPTS[:2]]
    with start_server(tmp_path/'m', port=free_port(), layout='qwen3_moe', extra=['--enforce-eager'], log_path=tmp_path/'vllm.log') as srv:
        assert json.loads((tmp_path/'serve'/'m_qwen3_moe'/'config.json').read_text())['model_type'] == 'qwen3_moe'
        for mode in ('fast', 'deep'):
            ours = generate(model, tok, convs, enable_thinking=mode == 'deep', max_new_tokens=NEW)
            for c, o in zip(convs, ours):
                status, r = post_json(srv.url, '/v1/chat/completions', chat_body(c, mode, NEW))
                assert status == 200 and r['choices'][0]['message']['content'] == o['text'], (mode, c, r, o['text'])
    assert live_processes(srv.proc.pid) == []


@needs_vllm
@pytest.mark.slow
def test_server_stops_cleanly(server):
    "Last test of the module: SIGTERM ends the server, its engine and workers, and frees the port."
    port = int(server.url.rsplit(':', 1)[1])
    assert len(live_processes(server.proc.pid)) >= 2          # the API server and its engine (and worker)
    t0 = time.monotonic()
    assert server.stop(timeout=60) == 0, server.log_path.read_text()[-3000:]
    assert time.monotonic() - t0 < 60
    assert live_processes(server.proc.pid) == []
    check_port('127.0.0.1', port)


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='PR_SET_PDEATHSIG is Linux only')
def test_server_process_dies_with_its_parent():
    "A process started as the server is (own session, `_die_with_parent`) ends when its parent is killed with SIGKILL."
    import os, signal, subprocess, time
    code = ("import subprocess, sys, time\nfrom compass_nbdev.serve import _die_with_parent\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True, preexec_fn=_die_with_parent)\n"
            "print(p.pid, flush=True); time.sleep(60)\n")
    par = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)
    child = int(par.stdout.readline())
    os.kill(par.pid, signal.SIGKILL); par.wait()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10:
        try:
            if open(f'/proc/{child}/stat').read().rsplit(')', 1)[1].split()[0] == 'Z': break
        except FileNotFoundError: break
        time.sleep(0.05)
    else: os.kill(child, signal.SIGKILL); raise AssertionError('the child outlived its killed parent')
