"Training: config validation, packing, schedule, bits/byte, exact resume, atomic checkpoints (SIGKILL mid-save), NaN stop, Ctrl-C, 2 processes."
import json, math, os, signal, socket, subprocess, sys, textwrap, time
from pathlib import Path
import pytest, torch, yaml
from tokenizers import Tokenizer, models, trainers, pre_tokenizers, decoders
from transformers import PreTrainedTokenizerFast
from compass_nbdev.core import ConfigError, load_config_file
from compass_nbdev.synthetic import synthetic_corpus
from compass_nbdev.model import CompassConfig, CompassForCausalLM
import compass_nbdev.train as T
from compass_nbdev.train import (TrainConfig, StageConfig, TRAIN_PRESETS, train_config, lr_at, load_docs, split_heldout,
                                 PackedData, val_bpb, save_checkpoint, load_checkpoint, verify_checkpoint, list_checkpoints,
                                 CheckpointError, TrainingDiverged, train_stage, _read_metrics)

LANGS = ['en', 'id', 'th', 'vi', 'zh']
# a very small recipe: 3 stages, 12 steps, log every step
SMALL = dict(model='tiny', micro_batch_size=2, log_every=1, save_every=3, keep_last=10, val_max_docs=3,
             stages=[dict(name='pretrain', steps=6, seq_len=32, lr=3e-3, warmup_steps=2),
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
    s = train_stage(SMALL, run, tok_dir, data_file, plots=False)
    return run, s

def losses(run): return [(r['global_step'], r['loss'], r['lm_loss'], r['grad_norm']) for r in _read_metrics(Path(run)/'metrics.jsonl')]

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
    ({'stages': [{}, {'lr': -1.0}]}, 'train.stages[1].lr'), ({'stages': [{'mix': {'xx': 1.0}}]}, 'train.stages[0].mix.xx'),
    ({'stages': [{'schedule': 'step'}]}, 'train.stages[0].schedule'), ({'stages': []}, 'train.stages'),
    ({'stages': [{'warmup_steps': 500, 'steps': 10}]}, 'train.stages[0].warmup_steps'), ({'model': 'huge'}, 'train.model'),
    ({'model_overrides': {'num_key_value_heads': 3}}, 'train.model_overrides.num_key_value_heads'),
    ({'micro_batch_size': 0}, 'train.micro_batch_size'), ({'learning_rate': 1.0}, 'train.learning_rate'),
    ({'stages': [{'name': 'a'}, {'name': 'a'}]}, 'train.stages[1].name'), ({'mixed_precision': 'fp8'}, 'train.mixed_precision')])
def test_bad_config_names_the_key(d, key):
    with pytest.raises(ConfigError) as e: TrainConfig.from_dict(d, 'train')
    assert str(e.value).startswith(key + ':'), str(e.value)

@pytest.mark.parametrize('name', list(TRAIN_PRESETS))
def test_presets_are_valid_three_stage_recipes(name):
    c = train_config(name)
    assert [s.name for s in c.stages] == ['pretrain', 'anneal', 'long_context']
    assert c.stages[2].seq_len > c.stages[0].seq_len and c.stages[2].rope_theta and c.stages[1].mix
    assert c.model_config().max_position_embeddings > c.stages[2].seq_len
    assert TrainConfig.from_dict(c.to_dict()) == c                     # round trip through plain data

def test_yaml_config_file(tmp_path):
    f = tmp_path/'train.yaml'; f.write_text(yaml.safe_dump(SMALL))
    assert TrainConfig.from_dict(load_config_file(f)).stages[2].rope_theta == 40000.0
    f.write_text(yaml.safe_dump({**SMALL, 'stages': [{'name': 'x', 'seq_len': 4}]}))
    with pytest.raises(ConfigError, match=r'stages\[0\]\.seq_len'): TrainConfig.from_dict(load_config_file(f))

def test_bad_config_rejected_before_any_work(tmp_path, tok_dir, data):
    with pytest.raises(ConfigError, match='stages'): train_stage({'stages': [{'lr': 0.0}]}, tmp_path/'run', tok_dir, data)
    assert not (tmp_path/'run').exists()

# ---------- schedule, data, bits per byte ----------
def test_schedule_warmup_rewarmup_decay():
    c = TrainConfig.from_dict(SMALL)
    s1, s2 = c.stages[0], c.stages[1]
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
    st = StageConfig(seq_len=32, mix={'th': 5.0, 'en': 0.0})
    plan = pk.plan(st, 3000, seed=0)
    langs = [pk.cells[c][0] for c in plan[:, 0]]
    assert 'en' not in langs and langs.count('th') > 2 * max(langs.count(l) for l in ('id', 'vi', 'zh'))
    assert (pk.plan(st, 3000, seed=0) == plan).all() and not (pk.plan(st, 3000, seed=1) == plan).all()
    b = pk.batch(plan[:5], 32)
    assert b.shape == (5, 32) and b.dtype == torch.int64 and int(b.max()) < len(tok)
    with pytest.raises(ConfigError, match='mix'): pk.weights(StageConfig(mix={l: 0.0 for l in LANGS}))

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
def test_staged_run_writes_the_run_folder(reference):
    run, s = reference
    assert s['status'] == 'done' and s['global_step'] == 12
    recs = _read_metrics(run/'metrics.jsonl')
    assert [r['stage'] for r in recs] == ['pretrain'] * 6 + ['anneal'] * 4 + ['long'] * 2
    assert recs[-1]['tokens'] == 10 * 2 * 32 + 2 * 2 * 64
    assert min(r['lm_loss'] for r in recs[6:]) < recs[0]['lm_loss'] - 0.1     # learning (tiny steps: noisy)
    assert set(recs[-1]['val_bpb']) == set(LANGS) and all(0 < v < 20 for v in recs[-1]['val_bpb'].values())
    for k in ('aux_loss', 'z_loss', 'lr', 'grad_norm', 'tokens_per_s', 'load_max_mean', 'load_cv'): assert k in recs[-1]
    assert len(recs[-1]['load_max_mean']) == 3                             # tiny: 3 MoE layers
    m = CompassForCausalLM.from_pretrained(run/'model')
    assert m.config.rope_theta == 40000.0 and m.config.max_position_embeddings > 64
    assert [n for n, _ in list_checkpoints(run/'checkpoints')] == [3, 6, 9, 10, 12]
    assert json.loads((run/'checkpoints'/'step_6'/'state.json').read_text())['stage'] == 1    # stage 1 done: next is stage 2

def test_resume_is_bit_exact(reference, tmp_path, tok_dir, data_file):
    ref, _ = reference
    run = tmp_path/'run'
    assert train_stage(SMALL, run, tok_dir, data_file, stop_after=4, plots=False)['status'] == 'stopped'
    assert [n for n, _ in list_checkpoints(run/'checkpoints')] == [3, 4]
    s = train_stage(SMALL, run, tok_dir, data_file, plots=False)        # resumes from step_4, crosses two stage boundaries
    assert s['status'] == 'done' and same_losses(run, ref)         # same floats, bit for bit
    a, b = state(ref/'checkpoints'/'step_12'), state(run/'checkpoints'/'step_12')
    assert all(torch.equal(a[k], b[k]) for k in a)

def test_resume_from_a_stage_boundary_restores_the_rope_base(reference, tmp_path, tok_dir, data_file):
    ref, _ = reference
    run = tmp_path/'run'
    train_stage(SMALL, run, tok_dir, data_file, stop_after=11, plots=False)   # inside stage 3 (rope_theta changed)
    train_stage(SMALL, run, tok_dir, data_file, plots=False)
    assert same_losses(run, ref)

# ---------- checkpoints ----------
def test_corrupt_truncated_incomplete_checkpoints_are_named(reference, tmp_path, tok_dir, data_file):
    import shutil
    ref, _ = reference
    run = tmp_path/'run'; shutil.copytree(ref, run)
    ck = run/'checkpoints'/'step_12'
    f = ck/'optimizer.pt'; raw = bytearray(f.read_bytes()); raw[len(raw) // 2] ^= 0xFF; f.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r'step_12/optimizer.pt: corrupt: SHA-256'): verify_checkpoint(ck)
    with pytest.raises(CheckpointError, match=r'step_12/optimizer.pt: corrupt'): train_stage(SMALL, run, tok_dir, data_file)
    f = ck/'model.safetensors'; f.write_bytes(f.read_bytes()[:500])
    with pytest.raises(CheckpointError, match=r'step_12/model.safetensors: truncated'): verify_checkpoint(ck)
    (ck/'manifest.json').unlink()
    with pytest.raises(CheckpointError, match='incomplete checkpoint'): verify_checkpoint(ck)
    shutil.rmtree(ck)                                                    # as the message advises: resume from step_10
    assert train_stage(SMALL, run, tok_dir, data_file, plots=False)['status'] == 'done' and same_losses(run, ref)

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

def _env(): return {**os.environ, 'OMP_NUM_THREADS': '1', 'TOKENIZERS_PARALLELISM': 'false'}

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
        T.train_stage(yaml.safe_load({yaml.safe_dump(SMALL)!r}), {str(run)!r}, {str(tok_dir)!r}, {str(data_file)!r}, plots=False)
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
    s = train_stage(SMALL, run, tok_dir, data_file, plots=False)               # resumes from step_3
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
        s = T.train_stage(yaml.safe_load({yaml.safe_dump(SMALL)!r}), {str(run)!r}, {str(tok_dir)!r}, {str(data_file)!r},
                          callback=press_ctrl_c, plots=False)
        print('SUMMARY', json.dumps(s))
    """)
    r = subprocess.run([sys.executable, str(f)], env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout.split('SUMMARY', 1)[1])
    assert (s['status'], s['global_step']) == ('interrupted', 5)
    assert [n for n, _ in list_checkpoints(run/'checkpoints')] == [3, 5] and not (run/'model').exists()
    train_stage(SMALL, run, tok_dir, data_file, plots=False)
    assert same_losses(run, ref)

def test_nan_stops_with_diagnostic_and_keeps_last_good(tmp_path, tok_dir, data_file):
    run = tmp_path/'run'
    def poison(info, model):
        if info['global_step'] == 4: model.model.layers[1].attn.qkv.weight.data[3, 3] = float('inf')
    with pytest.raises(TrainingDiverged) as e: train_stage(SMALL, run, tok_dir, data_file, callback=poison, plots=False)
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
    cfg = {**SMALL, 'stages': SMALL['stages'][:2], 'save_every': 100}
    run2 = tmp_path/'two'
    f = _script(tmp_path, f"""
        import yaml, torch.distributed as dist
        import compass_nbdev.train as T
        s = T.train_stage(yaml.safe_load({yaml.safe_dump(cfg)!r}), {str(run2)!r}, {str(tok_dir)!r}, {str(data_file)!r}, plots=False)
        assert dist.is_initialized() and dist.get_world_size() == 2, 'not distributed'
    """)
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_addr', '127.0.0.1',
                        '--master_port', str(_free_port()), str(f)], env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    run1 = tmp_path/'one'                                               # 1 process x 2 micro-steps = 2 processes x 1
    train_stage({**cfg, 'grad_accum': 2}, run1, tok_dir, data_file, plots=False)
    a, b = _read_metrics(run1/'metrics.jsonl'), _read_metrics(run2/'metrics.jsonl')
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
    s = train_stage({**SMALL, 'tensorboard': True}, run, tok_dir, data_file, stop_after=2, plots=False)
    assert s['status'] == 'stopped'
    ev = list((run/'tensorboard').rglob('events.out.tfevents.*'))
    assert ev and sum(f.stat().st_size for f in ev) > 100

def test_load_train_config_from_file_preset_and_overrides(tmp_path):
    f = tmp_path/'run.toml'
    f.write_text('preset = "tiny"\n[train]\nmicro_batch_size = 3\n[[train.stages]]\nname = "only"\nsteps = 12\nseq_len = 32\n')
    c = T.load_train_config(f, {'seed': 5})
    assert (c.model, c.micro_batch_size, [s.steps for s in c.stages], c.seed) == ("tiny", 3, [12], 5)
    assert T.load_train_config(None) == train_config('laptop') and T.load_train_config('tiny') == train_config('tiny')
    f.write_text('preset = "tiny"\n[train]\nwarmup = 3\n')
    with pytest.raises(ConfigError, match='^warmup: unknown key'): T.load_train_config(f)
