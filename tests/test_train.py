"Training: config validation, packing, schedule, bits/byte, exact resume, atomic checkpoints (SIGKILL mid-save), NaN stop, Ctrl-C, 2 processes (DDP, FSDP2, sharded validation), MFU/FLOPs."
import json, math, os, signal, socket, subprocess, sys, textwrap, time
from pathlib import Path
import pytest, torch, yaml
from tokenizers import Tokenizer, models, trainers, pre_tokenizers, decoders
from transformers import PreTrainedTokenizerFast
from compass_nbdev.core import ConfigError, load_config_file
from compass_nbdev.synthetic import synthetic_corpus
from compass_nbdev.model import CompassConfig, CompassForCausalLM
import compass_nbdev.train as T
from compass_nbdev.train import (TrainConfig, PhaseConfig, TRAIN_PRESETS, train_config, lr_at, load_docs, split_heldout,
                                 PackedData, val_bpb, save_checkpoint, load_checkpoint, verify_checkpoint, list_checkpoints,
                                 CheckpointError, TrainingDiverged, read_metrics)
from compass_nbdev.train import run as train_run

LANGS = ['en', 'id', 'th', 'vi', 'zh']
# a very small recipe: 3 phases, 12 steps, log every step
SMALL = dict(model='tiny', micro_batch_size=2, log_every=1, save_every=3, keep_last=10, val_max_docs=3,
             phases=[dict(name='pretrain', steps=6, seq_len=32, lr=3e-3, warmup_steps=2),
                     dict(name='anneal', steps=4, seq_len=32, lr=1e-3, warmup_steps=1, schedule='linear', min_lr_ratio=0.0,
                          mix={'th': 3.0}, domain_mix={'ecommerce': 2.0}),
                     dict(name='long', steps=2, seq_len=64, lr=5e-4, warmup_steps=1, rope_theta=40000.0)])

@pytest.fixture(scope='module')
def data(): return synthetic_corpus(24, LANGS, seed=0)

@pytest.fixture(scope='module')
def tok_dir(data, tmp_path_factory):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False); tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([d['text'] for d in data], trainers.BpeTrainer(vocab_size=400, special_tokens=['<|bos|>', '<|eos|>', '<|pad|>'],
                                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token='<|bos|>', eos_token='<|eos|>', pad_token='<|pad|>')
    d = tmp_path_factory.mktemp('tok'); hf.save_pretrained(d)
    return d

@pytest.fixture(scope='module')
def data_file(data, tmp_path_factory):
    "The corpus as a cleaned-data folder (clean/<lang>.jsonl), as the data stage writes it."
    d = tmp_path_factory.mktemp('data'); (d/'clean').mkdir()
    for l in LANGS:
        (d/'clean'/f'{l}.jsonl').write_text(''.join(json.dumps(x, ensure_ascii=False) + '\n' for x in data if x['lang'] == l))
    return d

@pytest.fixture(scope='module')
def reference(tmp_path_factory, tok_dir, data_file):
    "One uninterrupted SMALL run, shared by the resume tests."
    run = tmp_path_factory.mktemp('ref')/'run'
    s = train_run(SMALL, run, tok_dir, data_file, plots=False)
    return run, s

def losses(run): return [(r['global_step'], r['loss'], r['lm_loss'], r['grad_norm']) for r in read_metrics(Path(run)/'metrics.jsonl')]

def same_losses(run, ref):
    a, b = losses(run), losses(ref)
    diff = [(x, y) for x, y in zip(a, b) if x != y]
    assert len(a) == len(b) and not diff, f"{len(a)} vs {len(b)} records; first differences: {diff[:2]}"
    return True

def state(path):
    from safetensors.torch import load_file
    return load_file(str(Path(path)/'model.safetensors'))

# ---------- config ----------
@pytest.mark.parametrize('d,key', [
    ({'phases': [{}, {'lr': -1.0}]}, 'train.phases[1].lr'), ({'phases': [{'mix': {'xx': 1.0}}]}, 'train.phases[0].mix.xx'),
    ({'phases': [{'schedule': 'step'}]}, 'train.phases[0].schedule'), ({'phases': []}, 'train.phases'),
    ({'phases': [{'warmup_steps': 500, 'steps': 10}]}, 'train.phases[0].warmup_steps'), ({'model': 'huge'}, 'train.model'),
    ({'model_overrides': {'num_key_value_heads': 3}}, 'train.model_overrides.num_key_value_heads'),
    ({'micro_batch_size': 0}, 'train.micro_batch_size'), ({'learning_rate': 1.0}, 'train.learning_rate'),
    ({'phases': [{'name': 'a'}, {'name': 'a'}]}, 'train.phases[1].name'), ({'mixed_precision': 'fp8'}, 'train.mixed_precision')])
def test_bad_config_names_the_key(d, key):
    with pytest.raises(ConfigError) as e: TrainConfig.from_dict(d, 'train')
    assert str(e.value).startswith(key + ':'), str(e.value)

@pytest.mark.parametrize('name', list(TRAIN_PRESETS))
def test_presets_are_valid_three_phase_recipes(name):
    c = train_config(name)
    assert [s.name for s in c.phases] == ['pretrain', 'anneal', 'long_context']
    assert c.phases[2].seq_len > c.phases[0].seq_len and c.phases[2].rope_theta and c.phases[1].mix
    assert c.model_config().max_position_embeddings > c.phases[2].seq_len
    assert TrainConfig.from_dict(c.to_dict()) == c                     # round trip through plain data

def test_yaml_config_file(tmp_path):
    f = tmp_path/'train.yaml'; f.write_text(yaml.safe_dump(SMALL))
    assert TrainConfig.from_dict(load_config_file(f)).phases[2].rope_theta == 40000.0
    old = {k: v for k, v in SMALL.items() if k != 'phases'}           # `stages`, the key's old name, still loads as phases
    f.write_text(yaml.safe_dump({**old, 'stages': SMALL['phases']}))
    assert TrainConfig.from_dict(load_config_file(f)).phases[2].rope_theta == 40000.0
    f.write_text(yaml.safe_dump({**old, 'stages': [{'name': 'x', 'seq_len': 4}]}))
    with pytest.raises(ConfigError, match=r'phases\[0\]\.seq_len: must be >= 8'): TrainConfig.from_dict(load_config_file(f))

def test_bad_config_rejected_before_any_work(tmp_path, tok_dir, data):
    with pytest.raises(ConfigError, match='phases'): train_run({'phases': [{'lr': 0.0}]}, tmp_path/'run', tok_dir, data)
    assert not (tmp_path/'run').exists()

# ---------- schedule, data, bits per byte ----------
def test_schedule_warmup_rewarmup_decay():
    c = TrainConfig.from_dict(SMALL)
    s1, s2 = c.phases[0], c.phases[1]
    assert lr_at(s1, 0) == pytest.approx(1.5e-3) and lr_at(s1, 1) == pytest.approx(3e-3)
    assert lr_at(s1, 5) < lr_at(s1, 2) and lr_at(s1, 6) == pytest.approx(3e-3 * 0.1)
    assert lr_at(s2, 0) == pytest.approx(1e-3) and lr_at(s2, 4) == pytest.approx(0.0)   # re-warmup then linear to 0

def test_heldout_split_disjoint_and_order_free(data):
    docs = load_docs(data)
    tr, va = split_heldout(docs, 0.1, 3, seed=1)
    assert {l: len(v) for l, v in va.items()} == {l: 2 for l in LANGS}   # round(0.1 * 24) = 2 per language
    assert not {t for v in va.values() for t in v} & {d['text'] for d in tr}
    assert split_heldout(docs[::-1], 0.1, 3, seed=1)[1] == va and split_heldout(docs, 0.1, 3, seed=2)[1] != va

def test_packing_mix_and_determinism(data, tok_dir):
    tok = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    pk = PackedData(load_docs(data), tok, seed=0)
    assert sum(pk.n_tokens) == sum(len(tok(d['text'])['input_ids']) + 1 for d in data)       # every doc + one EOS
    st = PhaseConfig(seq_len=32, mix={'th': 5.0, 'en': 0.0})
    plan = pk.plan(st, 3000, seed=0)
    langs = [pk.cells[c][0] for c in plan[:, 0]]
    assert 'en' not in langs and langs.count('th') > 2 * max(langs.count(l) for l in ('id', 'vi', 'zh'))
    assert (pk.plan(st, 3000, seed=0) == plan).all() and not (pk.plan(st, 3000, seed=1) == plan).all()
    b = pk.batch(plan[:5], 32)
    assert b.shape == (5, 32) and b.dtype == torch.int64 and int(b.max()) < len(tok)
    with pytest.raises(ConfigError, match='mix'): pk.weights(PhaseConfig(mix={l: 0.0 for l in LANGS}))

def _mix(docs, alpha):
    "The data stage's mix weights of `docs` at `mix_alpha=alpha`, as {(lang, domain): weight}."
    from compass_nbdev.data import DataConfig, mix_weights
    counts = {}
    for d in docs:
        k = (d['lang'], d.get('domain') or 'general'); counts[k] = counts.get(k, 0) + len(d['text'].encode())
    mw = mix_weights(counts, DataConfig(mix_alpha=alpha))
    return dict(zip(zip(mw.lang, mw.domain), mw.weight))

@pytest.mark.parametrize('alpha', [0.05, 1.0])
def test_training_samples_tokens_by_the_data_mix(data, tok_dir, alpha):
    tok = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    docs = load_docs(data)
    mix = _mix(docs, alpha)
    pk = PackedData(docs, tok, seed=0, mix=mix)
    plan = pk.plan(PhaseConfig(seq_len=32), 6000, seed=0)
    got = {l: float(sum(pk.cells[c][0] == l for c in plan[:, 0])) / len(plan) for l in LANGS}   # blocks = equal token counts
    want = {l: sum(w for (ml, _), w in mix.items() if ml == l) for l in LANGS}
    assert max(abs(got[l] - want[l]) for l in LANGS) < 0.025, (got, want)
    flat, natural = _mix(docs, 0.05), _mix(docs, 1.0)
    assert max(abs(flat[k] - natural[k]) for k in flat) > 0.02     # the setting matters: alpha moves the shares

def test_run_samples_by_the_data_stages_mix_and_resume_checks_it(tmp_path, tok_dir, data_file, data):
    import shutil
    from compass_nbdev.core import CompassError
    run = tmp_path/'run'; shutil.copytree(data_file, run/'data')
    rows = lambda m: [{'lang': l, 'domain': d, 'weight': w} for (l, d), w in m.items()]
    (run/'data'/'summary.json').write_text(json.dumps({'mix': rows(_mix(load_docs(data), 0.05))}))
    train_run(SMALL, run, tok_dir, stop_after=1, plots=False)               # data=None: the run's data stage output
    st = json.loads((list_checkpoints(run/'checkpoints')[-1][1]/'state.json').read_text())
    assert st['mix_hash'] == T.mix_hash(T.load_mix(run/'data')) is not None
    (run/'data'/'summary.json').write_text(json.dumps({'mix': rows(_mix(load_docs(data), 1.0))}))
    with pytest.raises(CompassError, match='the data mix'): train_run(SMALL, run, tok_dir, plots=False)

def test_val_bpb_of_uniform_model(data, tok_dir):
    tok = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    va = split_heldout(load_docs(data), 0.1, 3)[1]
    m = CompassForCausalLM(CompassConfig.from_preset('tiny', vocab_size=448))
    with torch.no_grad(): m.lm_head.weight.zero_()        # uniform predictions: NLL = ln V per token exactly
    bpb = val_bpb(m, tok, va, seq_len=16, batch_size=3)
    for l, tx in va.items():
        ntok = sum(len(x) for x in tok(tx, add_special_tokens=False)['input_ids'])
        assert bpb[l] == pytest.approx(math.log2(448) * ntok / sum(len(t.encode()) for t in tx), rel=1e-5)

# ---------- the loop, resume ----------
def test_phased_run_writes_the_run_folder(reference):
    run, s = reference
    assert s['status'] == 'done' and s['global_step'] == 12
    recs = read_metrics(run/'metrics.jsonl')
    assert [r['phase'] for r in recs] == ['pretrain'] * 6 + ['anneal'] * 4 + ['long'] * 2
    assert recs[-1]['tokens'] == 10 * 2 * 32 + 2 * 2 * 64
    assert min(r['lm_loss'] for r in recs[6:]) < recs[0]['lm_loss'] - 0.1     # learning (tiny steps: noisy)
    assert set(recs[-1]['val_bpb']) == set(LANGS) and all(0 < v < 20 for v in recs[-1]['val_bpb'].values())
    for k in ('aux_loss', 'z_loss', 'lr', 'grad_norm', 'tokens_per_s', 'load_max_mean', 'load_cv'): assert k in recs[-1]
    assert len(recs[-1]['load_max_mean']) == 3                             # tiny: 3 MoE layers
    m = CompassForCausalLM.from_pretrained(run/'model')
    assert m.config.rope_theta == 40000.0 and m.config.max_position_embeddings > 64
    assert [n for n, _ in list_checkpoints(run/'checkpoints')] == [3, 6, 9, 10, 12]
    assert json.loads((run/'checkpoints'/'step_6'/'state.json').read_text())['phase'] == 1    # phase 1 done: next is phase 2

def test_resume_is_bit_exact(reference, tmp_path, tok_dir, data_file):
    ref, _ = reference
    run = tmp_path/'run'
    assert train_run(SMALL, run, tok_dir, data_file, stop_after=4, plots=False)['status'] == 'stopped'
    assert [n for n, _ in list_checkpoints(run/'checkpoints')] == [3, 4]
    s = train_run(SMALL, run, tok_dir, data_file, plots=False)        # resumes from step_4, crosses two phase boundaries
    assert s['status'] == 'done' and same_losses(run, ref)         # same floats, bit for bit
    a, b = state(ref/'checkpoints'/'step_12'), state(run/'checkpoints'/'step_12')
    assert all(torch.equal(a[k], b[k]) for k in a)

def test_resume_from_a_phase_boundary_restores_the_rope_base(reference, tmp_path, tok_dir, data_file):
    ref, _ = reference
    run = tmp_path/'run'
    train_run(SMALL, run, tok_dir, data_file, stop_after=11, plots=False)   # inside phase 3 (rope_theta changed)
    train_run(SMALL, run, tok_dir, data_file, plots=False)
    assert same_losses(run, ref)

# ---------- checkpoints ----------
def test_corrupt_truncated_incomplete_checkpoints_are_named(reference, tmp_path, tok_dir, data_file):
    import shutil
    ref, _ = reference
    run = tmp_path/'run'; shutil.copytree(ref, run)
    ck = run/'checkpoints'/'step_12'
    f = ck/'optimizer.pt'; raw = bytearray(f.read_bytes()); raw[len(raw) // 2] ^= 0xFF; f.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r'step_12/optimizer.pt: corrupt: SHA-256'): verify_checkpoint(ck)
    with pytest.raises(CheckpointError, match=r'step_12/optimizer.pt: corrupt'): train_run(SMALL, run, tok_dir, data_file)
    f = ck/'model.safetensors'; f.write_bytes(f.read_bytes()[:500])
    with pytest.raises(CheckpointError, match=r'step_12/model.safetensors: truncated'): verify_checkpoint(ck)
    (ck/'manifest.json').unlink()
    with pytest.raises(CheckpointError, match='incomplete checkpoint'): verify_checkpoint(ck)
    shutil.rmtree(ck)                                                    # as the message advises: resume from step_10
    assert train_run(SMALL, run, tok_dir, data_file, plots=False)['status'] == 'done' and same_losses(run, ref)

def test_keep_last_and_overwrite(tmp_path):
    m = CompassForCausalLM(CompassConfig.from_preset('tiny')); opt = torch.optim.AdamW(m.parameters())
    for s in range(1, 6): save_checkpoint(tmp_path, s, m, opt, {'step': s}, keep_last=2)
    assert [n for n, _ in list_checkpoints(tmp_path)] == [4, 5]
    save_checkpoint(tmp_path, 5, m, opt, {'step': 'again'}, keep_last=2)      # re-saving a step replaces it
    assert load_checkpoint(tmp_path/'step_5', m, opt) == {'step': 'again'}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]

def _script(tmp_path, body):
    f = tmp_path/'job.py'
    f.write_text(textwrap.dedent(body))
    return f

def _env():  # the child computes with as many threads as this process: a reduction's rounding depends on the thread count
    return {**os.environ, 'OMP_NUM_THREADS': str(torch.get_num_threads()), 'TOKENIZERS_PARALLELISM': 'false'}

def test_sigkill_during_save_keeps_previous_checkpoint(reference, tmp_path, tok_dir, data_file):
    ref, _ = reference
    run = tmp_path/'run'
    f = _script(tmp_path, f"""
        import time, yaml
        from pathlib import Path
        import compass_nbdev.train as T
        def hook(p):   # the save of step 6 has written its model file: signal the test, then hang
            if p.parent.name == '.tmp-step_6' and p.name == 'model.safetensors':
                Path({str(tmp_path/'saving')!r}).touch(); time.sleep(120)
        T._SAVE_HOOK = hook
        T.run(yaml.safe_load({yaml.safe_dump(SMALL)!r}), {str(run)!r}, {str(tok_dir)!r}, {str(data_file)!r}, plots=False)
    """)
    p = subprocess.Popen([sys.executable, str(f)], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    t0 = time.time()
    while not (tmp_path/'saving').exists():
        assert p.poll() is None, p.stdout.read().decode()[-3000:]
        assert time.time() - t0 < 300; time.sleep(0.2)
    p.send_signal(signal.SIGKILL); p.wait()
    assert p.returncode == -signal.SIGKILL
    assert [n for n, _ in list_checkpoints(run/'checkpoints')] == [3]          # step_6 never appeared
    assert (run/'checkpoints'/'.tmp-step_6').is_dir()                           # the half-written save
    verify_checkpoint(run/'checkpoints'/'step_3')
    s = train_run(SMALL, run, tok_dir, data_file, plots=False)               # resumes from step_3
    assert s['status'] == 'done' and same_losses(run, ref)
    assert not (run/'checkpoints'/'.tmp-step_6').exists()

def test_ctrl_c_saves_and_exits_cleanly(reference, tmp_path, tok_dir, data_file):
    ref, _ = reference
    run = tmp_path/'run'
    f = _script(tmp_path, f"""
        import os, signal, json, yaml
        import compass_nbdev.train as T
        def press_ctrl_c(info, model):
            if info['global_step'] == 5: os.kill(os.getpid(), signal.SIGINT)
        s = T.run(yaml.safe_load({yaml.safe_dump(SMALL)!r}), {str(run)!r}, {str(tok_dir)!r}, {str(data_file)!r},
                          callback=press_ctrl_c, plots=False)
        print('SUMMARY', json.dumps(s))
    """)
    r = subprocess.run([sys.executable, str(f)], env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout.split('SUMMARY', 1)[1])
    assert (s['status'], s['global_step']) == ('interrupted', 5)
    assert [n for n, _ in list_checkpoints(run/'checkpoints')] == [3, 5] and not (run/'model').exists()
    train_run(SMALL, run, tok_dir, data_file, plots=False)
    assert same_losses(run, ref)

def test_nan_stops_with_diagnostic_and_keeps_last_good(tmp_path, tok_dir, data_file):
    run = tmp_path/'run'
    def poison(info, model):
        if info['global_step'] == 4: model.model.layers[1].attn.qkv.weight.data[3, 3] = float('inf')
    with pytest.raises(TrainingDiverged) as e: train_run(SMALL, run, tok_dir, data_file, callback=poison, plots=False)
    msg = str(e.value)
    assert 'step 5' in msg and "'model.layers.1'" in msg and 'step_3' in msg, msg
    rep = json.loads((run/'divergence.json').read_text())
    assert rep['step'] == 5 and rep['layers']['model.layers.1']['nonfinite_weights'] == 1
    assert not math.isfinite(rep['losses']['loss'])
    assert [n for n, _ in list_checkpoints(run/'checkpoints')] == [3]; verify_checkpoint(run/'checkpoints'/'step_3')

# ---------- two processes ----------
def _free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def test_two_processes_match_one_with_the_same_global_batch(tmp_path, tok_dir, data_file):
    cfg = {**SMALL, 'phases': SMALL['phases'][:2], 'save_every': 100}
    run2 = tmp_path/'two'
    f = _script(tmp_path, f"""
        import yaml, torch.distributed as dist
        import compass_nbdev.train as T
        s = T.run(yaml.safe_load({yaml.safe_dump(cfg)!r}), {str(run2)!r}, {str(tok_dir)!r}, {str(data_file)!r}, plots=False)
        assert dist.is_initialized() and dist.get_world_size() == 2, 'not distributed'
    """)
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_addr', '127.0.0.1',
                        '--master_port', str(_free_port()), str(f)], env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    run1 = tmp_path/'one'                                               # 1 process x 2 micro-steps = 2 processes x 1
    train_run({**cfg, 'grad_accum': 2}, run1, tok_dir, data_file, plots=False)
    a, b = read_metrics(run1/'metrics.jsonl'), read_metrics(run2/'metrics.jsonl')
    assert [r['global_step'] for r in a] == [r['global_step'] for r in b] == list(range(1, 11))
    for x, y in zip(a, b):
        assert x['tokens'] == y['tokens'] and x['loss'] == pytest.approx(y['loss'], rel=1e-4, abs=1e-5)
        assert x['grad_norm'] == pytest.approx(y['grad_norm'], rel=1e-3)
    sa, sb = state(run1/'checkpoints'/'step_10'), state(run2/'checkpoints'/'step_10')
    assert all(torch.allclose(sa[k], sb[k], atol=2e-5, rtol=1e-4) for k in sa)
    assert sorted(p.name for p in (run2/'checkpoints'/'step_10').glob('rng_*.pt')) == ['rng_0.pt', 'rng_1.pt']

def test_tensorboard_events(tmp_path, tok_dir, data_file):
    pytest.importorskip('tensorboard')
    run = tmp_path/'run'
    s = train_run({**SMALL, 'tensorboard': True}, run, tok_dir, data_file, stop_after=2, plots=False)
    assert s['status'] == 'stopped'
    ev = list((run/'tensorboard').rglob('events.out.tfevents.*'))
    assert ev and sum(f.stat().st_size for f in ev) > 100

def test_load_train_config_from_file_preset_and_overrides(tmp_path):
    f = tmp_path/'run.toml'
    f.write_text('preset = "tiny"\n[train]\nmicro_batch_size = 3\n[[train.phases]]\nname = "only"\nsteps = 12\nseq_len = 32\n')
    c = T.load_train_config(f, {'seed': 5})
    assert (c.model, c.micro_batch_size, [s.steps for s in c.phases], c.seed) == ("tiny", 3, [12], 5)
    assert T.load_train_config(None) == train_config('laptop') and T.load_train_config('tiny') == train_config('tiny')
    f.write_text('preset = "tiny"\n[train]\nwarmup = 3\n')
    with pytest.raises(ConfigError, match='^warmup: unknown key'): T.load_train_config(f)

# ---------- FSDP (2 CPU processes, gloo) and sharded validation ----------
def _torchrun(tmp_path, body, timeout=600):
    f = _script(tmp_path, body)
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_addr', '127.0.0.1',
                        '--master_port', str(_free_port()), str(f)], env=_env(), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-4000:]
    return r

def test_fsdp_two_processes_match_one_and_resume_exactly(tmp_path, tok_dir, data_file):
    "FSDP2 over 2 gloo processes = 1 process with the same global batch; stop + resume under FSDP is bit exact."
    cfg = {**SMALL, 'phases': SMALL['phases'][:1], 'save_every': 100, 'model_overrides': {'balance': 'aux_free', 'bias_update_rate': 0.01}}
    full, part, out = tmp_path/'fsdp_full', tmp_path/'fsdp_part', tmp_path/'fsdp.json'
    _torchrun(tmp_path, f"""
        import json, yaml, torch, torch.distributed as dist
        from torch.distributed.tensor import DTensor
        import compass_nbdev.train as T
        cfg = {{**yaml.safe_load({yaml.safe_dump(cfg)!r}), 'distributed': 'fsdp'}}
        seen = {{}}
        def look(info, model): seen['model'] = model
        T.run(cfg, {str(full)!r}, {str(tok_dir)!r}, {str(data_file)!r}, plots=False, callback=look)
        m = seen['model']; w = m.model.layers[1].attn.qkv.weight
        assert T.is_sharded(m) and isinstance(w, DTensor) and w.to_local().shape[0] * 2 == w.shape[0], 'not sharded'
        bias = [l.ffn.balance_bias.tolist() for l in m.model.layers if l.is_moe]
        biases = [None, None]; dist.all_gather_object(biases, bias)
        s1 = T.run(cfg, {str(part)!r}, {str(tok_dir)!r}, {str(data_file)!r}, plots=False, stop_after=3)
        s2 = T.run(cfg, {str(part)!r}, {str(tok_dir)!r}, {str(data_file)!r}, plots=False)
        if dist.get_rank() == 0:
            open({str(out)!r}, 'w').write(json.dumps(dict(biases=biases, status=[s1['status'], s2['status']], val=s2['val_bpb'])))
    """)
    res = json.loads(out.read_text())
    assert res['status'] == ['stopped', 'done']
    same_losses(part, full)                                             # FSDP: stop at 3, resume = uninterrupted, bit for bit
    a, b = state(full/'checkpoints'/'step_6'), state(part/'checkpoints'/'step_6')
    assert all(torch.equal(a[k], b[k]) for k in a)
    one = tmp_path/'one'                                                # 1 process x 2 micro-steps = 2 FSDP processes x 1
    s = train_run({**cfg, 'grad_accum': 2}, one, tok_dir, data_file, plots=False)
    x, y = read_metrics(one/'metrics.jsonl'), read_metrics(full/'metrics.jsonl')
    assert [r['global_step'] for r in x] == [r['global_step'] for r in y] == list(range(1, 7))
    for p, q in zip(x, y):
        assert p['tokens'] == q['tokens'] and p['loss'] == pytest.approx(q['loss'], rel=1e-5)    # seen: 1e-7
        assert p['grad_norm'] == pytest.approx(q['grad_norm'], rel=1e-5)
        assert p['load_max_mean'] == q['load_max_mean']                  # expert load summed over the ranks
    b0, b1 = res['biases']
    assert b0 == b1                                                     # aux-free bias: the same on both ranks
    sa, sb = state(one/'checkpoints'/'step_6'), state(full/'checkpoints'/'step_6')
    assert sa.keys() == sb.keys() and all(torch.allclose(sa[k], sb[k], atol=2e-5, rtol=1e-4) for k in sa)
    assert torch.tensor(b0).allclose(torch.stack([sa[k] for k in sorted(sa) if k.endswith('balance_bias')]), atol=1e-6)
    assert res['val'] == pytest.approx(s['val_bpb'], rel=1e-5)
    m = CompassForCausalLM.from_pretrained(full/'model')                # the final model is a normal save_pretrained folder
    ref = CompassForCausalLM.from_pretrained(one/'model')
    assert m.lm_head.weight is m.model.embed_tokens.weight or torch.equal(m.lm_head.weight, m.model.embed_tokens.weight)
    for (k, v), (k2, v2) in zip(m.state_dict().items(), ref.state_dict().items()):
        assert k == k2 and torch.allclose(v, v2, atol=2e-5, rtol=1e-4), k
    assert json.loads((full/'model'/'config.json').read_text())['architectures'] == ['CompassForCausalLM']
    c = TrainConfig.from_dict({**cfg, 'grad_accum': 2})                # an FSDP checkpoint resumes in one process
    pm = T.build_model(c, PreTrainedTokenizerFast.from_pretrained(tok_dir)); po = T._optimizer(pm, c, fused=False)
    assert load_checkpoint(full/'checkpoints'/'step_6', pm, po)['global_step'] == 6
    ref_opt = torch.load(one/'checkpoints'/'step_6'/'optimizer.pt', weights_only=False)['state']
    got = po.state_dict()['state']
    assert set(got) == set(ref_opt) and all(torch.allclose(got[i]['exp_avg'], ref_opt[i]['exp_avg'], atol=1e-6, rtol=1e-3) for i in got)

def test_fsdp_through_accelerates_own_prepare(tmp_path, tok_dir, data_file):
    "The GPU path: accelerate's FSDP2 `prepare` shards the model (forced on CPU here), stop + resume, same losses as 1 process."
    cfg = {**SMALL, 'phases': SMALL['phases'][:1], 'save_every': 100}
    run, out = tmp_path/'acc', tmp_path/'acc.json'
    _torchrun(tmp_path, f"""
        import json, yaml, torch.distributed as dist
        from accelerate import Accelerator
        from accelerate.utils import DistributedType
        import compass_nbdev.train as T
        cfg, acc, seen = yaml.safe_load({yaml.safe_dump(cfg)!r}), Accelerator(cpu=True), {{}}
        def as_on_gpus():   # what accelerate sets up with GPUs and an FSDP config; it ignores FSDP for CPU processes
            acc.state.distributed_type, acc.state.fsdp_plugin = DistributedType.FSDP, T.fsdp_plugin()
            assert T.distributed_mode(T.TrainConfig.from_dict(cfg), acc) == 'fsdp'
        def look(info, model): seen['sharded'] = T.is_sharded(model)
        as_on_gpus(); s1 = T.run(cfg, {str(run)!r}, {str(tok_dir)!r}, {str(data_file)!r}, plots=False, stop_after=3, accelerator=acc)
        as_on_gpus(); s2 = T.run(cfg, {str(run)!r}, {str(tok_dir)!r}, {str(data_file)!r}, plots=False, accelerator=acc, callback=look)
        if dist.get_rank() == 0: open({str(out)!r}, 'w').write(json.dumps([s1['status'], s2['status'], seen['sharded']]))
    """)
    assert json.loads(out.read_text()) == ['stopped', 'done', True]
    one = tmp_path/'one'
    train_run({**cfg, 'grad_accum': 2}, one, tok_dir, data_file, plots=False)
    x, y = read_metrics(one/'metrics.jsonl'), read_metrics(run/'metrics.jsonl')
    assert [r['global_step'] for r in x] == [r['global_step'] for r in y] == list(range(1, 7))
    assert all(p['loss'] == pytest.approx(q['loss'], rel=1e-5) and p['grad_norm'] == pytest.approx(q['grad_norm'], rel=1e-5) for p, q in zip(x, y))
    m, ref = CompassForCausalLM.from_pretrained(run/'model'), CompassForCausalLM.from_pretrained(one/'model')
    assert all(torch.allclose(v, ref.state_dict()[k], atol=2e-5, rtol=1e-4) for k, v in m.state_dict().items())

def test_val_bpb_sharded_over_two_processes(tmp_path, tok_dir, data):
    "Each of 2 processes scores part of the held-out documents; the all-reduced bits/byte equal one process's (plain and FSDP)."
    out = tmp_path/'val.json'
    _torchrun(tmp_path, f"""
        import json, torch, torch.distributed as dist
        from transformers import PreTrainedTokenizerFast
        from compass_nbdev.model import CompassConfig, CompassForCausalLM
        from compass_nbdev.synthetic import synthetic_corpus
        import compass_nbdev.train as T
        dist.init_process_group('gloo')
        tok = PreTrainedTokenizerFast.from_pretrained({str(tok_dir)!r})
        va = T.split_heldout(T.load_docs(synthetic_corpus(24, {LANGS!r}, seed=0)), 0.15, 3)[1]   # 15 documents: 8 + 7
        torch.manual_seed(0); m = CompassForCausalLM(CompassConfig.from_preset('tiny', vocab_size=448))
        plain = T.val_bpb(m, tok, va, seq_len=16, batch_size=2)
        share = float(T.val_sums(m, tok, va, 16, 2, dist.get_rank(), 2)[1].sum())
        T.fsdp_wrap(m); assert T.is_sharded(m)
        sharded = T.val_bpb(m, tok, va, seq_len=16, batch_size=2)     # uneven shares: padding batches keep FSDP in step
        res = [None, None]; dist.all_gather_object(res, dict(plain=plain, fsdp=sharded, share=share))
        if dist.get_rank() == 0: open({str(out)!r}, 'w').write(json.dumps(res))
        dist.destroy_process_group()
    """)
    r0, r1 = json.loads(out.read_text())
    tok = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    va = split_heldout(load_docs(data), 0.15, 3)[1]
    torch.manual_seed(0); m = CompassForCausalLM(CompassConfig.from_preset('tiny', vocab_size=448))
    one = val_bpb(m, tok, va, seq_len=16, batch_size=2)
    total = sum(len(t.encode()) for v in va.values() for t in v)
    assert r0['share'] > 0 and r1['share'] > 0 and r0['share'] + r1['share'] == total          # the work was split
    for r in (r0, r1):
        assert r['plain'] == r['fsdp'] == r0['plain']                  # every process gets the same answer
    assert r0['plain'] == pytest.approx(one, rel=1e-6) and r0['fsdp'] == pytest.approx(one, rel=1e-6)

def test_fsdp_accelerate_config_file_and_wrap_policy(monkeypatch):
    "configs/fsdp_gpu.yaml, as `accelerate launch` reads it, gives an FSDP2 plugin that shards each DecoderLayer, like fsdp_wrap."
    from types import SimpleNamespace
    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.commands.launch import launch_command_parser, _validate_launch_command
    from accelerate.utils import DistributedType
    from accelerate.utils.launch import prepare_multi_gpu_env
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    f = Path(__file__).parents[1]/'configs'/'fsdp_gpu.yaml'
    args = _validate_launch_command(launch_command_parser().parse_args(['--config_file', str(f), '-m', 'compass_nbdev.cli', 'train']))[0]
    env = prepare_multi_gpu_env(args)                                   # what `accelerate launch` hands each process
    assert env['ACCELERATE_USE_FSDP'] == 'true' and env['FSDP_VERSION'] == '2'
    for k, v in env.items():
        if k.startswith(('FSDP_', 'ACCELERATE_USE_FSDP')): monkeypatch.setenv(k, v)
    m = CompassForCausalLM(CompassConfig.from_preset('tiny'))
    for plug in (FullyShardedDataParallelPlugin(), T.fsdp_plugin()):    # from the file's environment, and ours
        assert plug.fsdp_version == 2 and plug.state_dict_type.name == 'FULL_STATE_DICT'
        policy = fsdp2_prepare_auto_wrap_policy(plug, m)
        assert [x for x in m.modules() if policy(x)] == list(m.model.layers)
    acc = lambda t, n, v=2: SimpleNamespace(distributed_type=t, num_processes=n, state=SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=v)))
    assert T.distributed_mode(train_config('tiny'), acc(DistributedType.MULTI_CPU, 2)) == 'fsdp-own'   # the env says FSDP
    assert T.distributed_mode(train_config('tiny', distributed='ddp'), acc(DistributedType.MULTI_CPU, 2)) == 'ddp'
    assert T.distributed_mode(train_config('tiny'), acc(DistributedType.FSDP, 8)) == 'fsdp'
    with pytest.raises(ConfigError, match='^distributed: accelerate is configured for FSDP1'):
        T.distributed_mode(train_config('tiny'), acc(DistributedType.FSDP, 8, v=1))
    with pytest.raises(ConfigError, match="^distributed: 'ddp', but accelerate is configured for FSDP"):
        T.distributed_mode(train_config('tiny', distributed='ddp'), acc(DistributedType.FSDP, 8))
    monkeypatch.delenv('ACCELERATE_USE_FSDP')
    assert T.distributed_mode(train_config('tiny'), acc(DistributedType.MULTI_CPU, 2)) == 'ddp'
    assert T.distributed_mode(train_config('tiny', distributed='fsdp'), acc(DistributedType.NO, 1)) == 'single'
    with pytest.raises(ConfigError, match='^train.distributed:'): TrainConfig.from_dict({'distributed': 'zero3'}, 'train')

def test_optimizer_state_by_name_round_trip():
    "Index-keyed (plain) and name-keyed (FSDP) optimizer states convert into each other."
    m = CompassForCausalLM(CompassConfig.from_preset('tiny')); opt = T._optimizer(m, train_config('tiny'), fused=False)
    x = torch.randint(0, 512, (2, 16)); m(input_ids=x, labels=x).loss.backward(); opt.step()
    names = T._optim_names(m, opt)
    assert len(names) == len(set(names)) == len(list(m.parameters())) and 'model.embed_tokens.weight' in names
    sd = opt.state_dict(); by = T._optim_by_name(sd, names)
    assert set(by['state']) == set(names) and T._optim_by_index(by, names) == sd

def test_bf16_autocast_on_cpu(tmp_path, tok_dir, data_file):
    "mixed_precision='bf16' runs the loop under autocast (on CPU here; on a GPU 'auto' picks it)."
    from accelerate.state import AcceleratorState
    cfg = {**SMALL, 'phases': SMALL['phases'][:1]}
    AcceleratorState._reset_state()          # accelerate keeps one mixed-precision setting per process
    try: a = train_run({**cfg, 'mixed_precision': 'bf16'}, tmp_path/'bf16', tok_dir, data_file, stop_after=2, plots=False)
    finally: AcceleratorState._reset_state()
    b = train_run(cfg, tmp_path/'fp32', tok_dir, data_file, stop_after=2, plots=False)
    la, lb = losses(tmp_path/'bf16'), losses(tmp_path/'fp32')
    assert a['status'] == 'stopped' and all(math.isfinite(r[1]) for r in la)
    assert la[0][1] != lb[0][1] and la[0][1] == pytest.approx(lb[0][1], rel=2e-2)     # bf16 rounding, same model

def test_mfu_and_peak_flops(monkeypatch):
    from compass_nbdev.model import model_stats
    monkeypatch.delenv('COMPASS_PEAK_FLOPS', raising=False)
    assert T.peak_flops('cpu') is None and T.mfu(1e9, 1e3, peak=None) in (None, T.mfu(1e9, 1e3))
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    for name, peak in [('NVIDIA H100 80GB HBM3', 989e12), ('NVIDIA H100 PCIe', 756e12), ('NVIDIA A100-SXM4-80GB', 312e12),
                       ('NVIDIA L40S', 362e12), ('NVIDIA L4', 121e12), ('NVIDIA H200', 989e12), ('Some Future GPU', None)]:
        monkeypatch.setattr(torch.cuda, 'get_device_name', lambda d=None, n=name: n)
        assert T.peak_flops('cuda') == peak, name
    monkeypatch.setenv('COMPASS_PEAK_FLOPS', '1e15'); assert T.peak_flops() == 1e15
    c = CompassConfig.from_preset('gpu-small')
    f = model_stats(c, 1024)['train_flops_per_token']
    L, nh, hd = c.num_hidden_layers, c.num_attention_heads, c.head_dim
    assert f == 6 * (model_stats(c, 0)['train_flops_per_token'] / 6) + 6 * L * 1024 * nh * hd
    assert T.mfu(f, 1e5, n_devices=2, peak=989e12) == pytest.approx(f * 1e5 / (2 * 989e12))

def test_measure_throughput_on_cpu(tok_dir, data, tmp_path):
    r = T.measure_throughput(tok_dir, 'tiny', steps=4, warmup=2, data=data, run_dir=tmp_path/'run')
    assert r['device'] == 'cpu' and r['mfu'] is None and r['tokens_per_s'] > 0 and r['tokens_per_step'] == 4 * 64
    assert len(read_metrics(tmp_path/'run'/'metrics.jsonl')) == 4 and math.isfinite(r['final_loss'])
    with pytest.raises(ConfigError, match='^steps:'): T.measure_throughput(tok_dir, 'tiny', steps=2, warmup=2)

def test_flops_per_token_matches_torch_flop_counter():
    "model_stats' 6·N_active matmul FLOPs = what torch's FlopCounterMode counts in forward + backward (norm weights aside)."
    from torch.utils.flop_counter import FlopCounterMode
    from compass_nbdev.model import model_stats
    for over in ({}, {'n_shared_experts': 0, 'num_experts_per_tok': 3}, {'tie_word_embeddings': False}):
        c = CompassConfig.from_preset('tiny', moe_impl='loop', **over)    # loop: plain matmuls the counter sees
        m = CompassForCausalLM(c); x = torch.randint(0, c.vocab_size, (3, 40))
        with FlopCounterMode(display=False) as fc: m(input_ids=x, labels=x).loss.backward()
        attn = 6 * c.num_hidden_layers * 40 * c.num_attention_heads * c.head_dim        # SDPA: not counted on the CPU
        norms = c.num_hidden_layers * (2 * c.hidden_size + 2 * c.head_dim) + c.hidden_size
        assert fc.get_total_flops() / x.numel() == model_stats(c, 40)['train_flops_per_token'] - attn - 6 * norms, over

# ---------- the loop on its own (what SFT builds on) ----------
def test_learner_with_an_iterable_source_and_masked_labels_resumes_exactly(tmp_path):
    "A generic batch source (IterBatches) with -100 labels: stopped + resumed = one run, bit for bit, across an epoch."
    def batches(ep):
        g = torch.Generator().manual_seed(ep)
        for _ in range(5):
            x = torch.randint(0, 64, (2, 12), generator=g); y = x.clone(); y[:, :4] = -100     # a prompt that does not count
            yield {'input_ids': x, 'labels': y}
    phases = [T.PhaseConfig(name='sft', steps=8, seq_len=12, lr=3e-3, warmup_steps=2)]
    def fit(ck, stop=None):
        torch.manual_seed(0); m = CompassForCausalLM(CompassConfig.from_preset('tiny', vocab_size=64)); seen = []
        cbs = [T.CheckpointCB(ck, every=3), T.FnCB(lambda info, model: seen.append(info['loss']))]
        learn = T.Learner(m, torch.optim.AdamW(m.parameters()), T.IterBatches(batches), phases, grad_accum=2,
                          cbs=cbs + ([T.StopAfterCB(stop)] if stop else []))
        return learn.fit(), seen
    whole = fit(tmp_path/'a')
    first, rest = fit(tmp_path/'b', stop=5), fit(tmp_path/'b')
    assert (first[0], rest[0]) == ('stopped', 'done') and first[1] + rest[1] == whole[1]
    assert json.loads((tmp_path/'b'/'step_5'/'state.json').read_text())['batches'] == {'epoch': 1, 'read': 5}

def test_learner_takes_a_loss_function(tmp_path):
    torch.manual_seed(0); m = CompassForCausalLM(CompassConfig.from_preset('tiny', vocab_size=64)); x = torch.randint(0, 64, (2, 8))
    class One(T.BatchSource):
        def batch(self, phase, step, micro): return {'input_ids': x}
    loss = lambda model, b: model(input_ids=b['input_ids']).logits.float().pow(2).mean()
    learn = T.Learner(m, torch.optim.SGD(m.parameters()), One(), [T.PhaseConfig(steps=3, seq_len=8, warmup_steps=0)], loss_fn=loss)
    assert learn.fit() == 'done' and learn.global_step == 3 and list(learn.losses) == ['loss']

# ---------- hardening (#23): checkpoints are data, one writer, resume only the same run ----------
class _Touch:
    "A pickle that creates a file when it is loaded."
    def __init__(self, p): self.p = p
    def __reduce__(self): return (open, (str(self.p), 'w'))

def _replace_in_checkpoint(ck, name, obj):
    "Write `obj` as checkpoint file `name` and fix the manifest, as someone crafting a checkpoint would."
    torch.save(obj, ck/name)
    man = json.loads((ck/'manifest.json').read_text())
    man['files'][name] = {'bytes': (ck/name).stat().st_size, 'sha256': T._sha256(ck/name)}
    (ck/'manifest.json').write_text(json.dumps(man))

def _model_and_opt(tok_dir):
    c = train_config(SMALL)
    m = T.build_model(c, PreTrainedTokenizerFast.from_pretrained(tok_dir))
    return m, T._optimizer(m, c, fused=False)

@pytest.mark.parametrize('name', ['optimizer.pt', 'rng_0.pt'])
def test_a_crafted_pickle_in_a_checkpoint_is_refused(reference, tmp_path, tok_dir, name):
    import shutil
    ref, _ = reference
    ck = tmp_path/'step_12'; shutil.copytree(ref/'checkpoints'/'step_12', ck)
    mark = tmp_path/'created-by-the-pickle'
    _replace_in_checkpoint(ck, name, {'state': _Touch(mark)})
    with pytest.raises(CheckpointError, match=f'{name}: refused to load'): load_checkpoint(ck, *_model_and_opt(tok_dir))
    assert not mark.exists()

def test_rng_state_of_older_checkpoints_still_loads(reference, tmp_path, tok_dir):
    "RNG files written before weights_only (NumPy arrays inside) load, with only NumPy's array names allowed."
    import shutil, random, numpy as np
    ref, _ = reference
    ck = tmp_path/'step_12'; shutil.copytree(ref/'checkpoints'/'step_12', ck)
    np.random.seed(7); want = np.random.get_state()[1].copy()
    _replace_in_checkpoint(ck, 'rng_0.pt', dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state(), cuda=None))
    np.random.seed(0)
    assert load_checkpoint(ck, *_model_and_opt(tok_dir))['global_step'] == 12
    assert (np.random.get_state()[1] == want).all()

def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(tmp_path, tok_dir, data_file):
    from compass_nbdev.core import CompassError
    run = tmp_path/'run'; run.mkdir()
    p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
    try:
        (run/'.lock').write_text(f'{p.pid}@{socket.gethostname()}')
        with pytest.raises(CompassError, match=f'in use by process {p.pid}'): train_run(SMALL, run, tok_dir, data_file, plots=False)
        assert [x.name for x in run.iterdir()] == ['.lock']                  # nothing else was written
    finally: p.kill(); p.wait()
    s = train_run(SMALL, run, tok_dir, data_file, stop_after=1, plots=False)   # its process is gone: a stale lock
    assert s['status'] == 'stopped' and not (run/'.lock').exists()

def test_resume_only_with_the_same_config_and_tokenizer(tmp_path, tok_dir, data_file, data):
    from compass_nbdev.core import CompassError
    run = tmp_path/'run'
    train_run(SMALL, run, tok_dir, data_file, stop_after=2, plots=False)
    other = {**SMALL, 'phases': [{**SMALL['phases'][0], 'lr': 1e-3}, *SMALL['phases'][1:]]}
    with pytest.raises(CompassError, match=r"phases\[0\]\.lr: 0\.003 -> 0\.001.*restart=True") as e:
        train_run(other, run, tok_dir, data_file, plots=False)
    assert str(e.value).startswith('resume: cannot resume from') and len(list_checkpoints(run/'checkpoints')) == 1
    tok2 = Tokenizer(models.BPE()); tok2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok2.train_from_iterator([d['text'] for d in data], trainers.BpeTrainer(vocab_size=300, special_tokens=['<|bos|>', '<|eos|>', '<|pad|>'],
                                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf2 = PreTrainedTokenizerFast(tokenizer_object=tok2, bos_token='<|bos|>', eos_token='<|eos|>', pad_token='<|pad|>')
    with pytest.raises(CompassError, match='the tokenizer'): train_run(SMALL, run, hf2, data_file, plots=False)
    assert train_run({**SMALL, 'log_every': 2}, run, tok_dir, data_file, stop_after=3, plots=False)['global_step'] == 3   # run-only keys may change
    s = train_run(other, run, tok_dir, data_file, restart=True, stop_after=1, plots=False)
    assert s['global_step'] == 1 and [n for n, _ in list_checkpoints(run/'checkpoints')] == [1]

def test_a_failed_final_save_keeps_the_previous_model(reference, tmp_path, tok_dir, data_file, monkeypatch):
    import shutil
    ref, _ = reference
    run = tmp_path/'run'; shutil.copytree(ref, run)
    before = state(run/'model')
    def boom(self, *a, **k): raise OSError("disk full")
    monkeypatch.setattr(PreTrainedTokenizerFast, 'save_pretrained', boom)
    with pytest.raises(OSError, match='disk full'): train_run(SMALL, run, tok_dir, data_file, plots=False)   # finished: only the save runs
    after = state(run/'model')
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith('.')) == []        # no temp folder, no lock left
