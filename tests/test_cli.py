"The installed `compass` command: exit codes and error messages a user sees."
import subprocess, sys, shutil, os
from pathlib import Path
import pytest, yaml

def compass(*args, cwd=None):
    exe = shutil.which('compass') or str(Path(sys.executable).parent/'compass')
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd, timeout=600)

def test_config_prints_resolved_yaml():
    r = compass('config', '--preset', 'tiny', '--set', 'data.mix_alpha=0.5')
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    assert cfg['preset'] == 'tiny' and cfg['data']['mix_alpha'] == 0.5

@pytest.mark.parametrize('args,msg', [
    (['config', '--set', 'data.mix_alfa=0.5'], 'data.mix_alfa: unknown key'),
    (['config', '--preset', 'huge'], "preset: unknown preset 'huge'"),
    (['config', '--set', 'data.mix_alpha=2'], 'data.mix_alpha: must be in (0, 1]'),
    (['data', '--data-dir', '/no/such/dir'], "data_dir: data directory '/no/such/dir' does not exist"),
    (['config', '--set', 'data=5'], 'data: expected a mapping, got 5'),                       # #23: was a TypeError traceback
    (['run', '--preset', 'tiny', '--data-dir', 'synthetic', '--set', 'train.seed=-5'], 'train.seed: must be >= 0, got -5'),
    (['config', '--set', 'train.phases=[5]'], 'train.phases[0]: expected a mapping, got 5'),
    (['config', '--set', 'data=5', '--set', 'data.seed=1'], "'data' is already set to 5"),
    (['config', '--set', 'seed=-1'], 'seed: must be >= 0, got -1'),
    (['config', '--preset', 'tiny', '--set', 'train.model_overrides.n_experts=4'],              # #23: a typo was ignored
     'train.model_overrides.n_experts: unknown key; allowed: vocab_size, hidden_size'),
])
def test_bad_input_names_the_key(args, msg):
    r = compass(*args)
    assert r.returncode == 2
    assert msg in r.stderr and 'Traceback' not in r.stderr

def test_bad_run_seed_writes_nothing(tmp_path):
    "A bad setting stops the command before the run folder is created."
    r = compass('run', '--preset', 'tiny', '--data-dir', 'synthetic', '--run-dir', str(tmp_path/'run'), '--set', 'train.seed=-5')
    assert r.returncode == 2 and 'Traceback' not in r.stderr and not (tmp_path/'run').exists()

def test_top_level_seed_seeds_every_stage():
    "The run's `seed` is copied into every seeded section (on main it changed only SFT's data)."
    r = compass('config', '--preset', 'tiny', '--set', 'seed=7', '--set', 'train.seed=3')
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    assert [cfg['seed']] + [cfg[s]['seed'] for s in ('data', 'tokenizer', 'train', 'sft')] == [7] * 5
    plain = yaml.safe_load(compass('config', '--preset', 'tiny', '--set', 'train.seed=3').stdout)
    assert plain['seed'] is None and plain['train']['seed'] == 3 and plain['data']['seed'] == 0

def test_eval_section_defaults_come_from_evaluate():
    from compass_nbdev.evaluate import EvalConfig
    cfg = yaml.safe_load(compass('config', '--preset', 'laptop').stdout)
    assert cfg['eval'] == EvalConfig().to_dict()

def test_config_file_is_named_in_errors(tmp_path):
    f = tmp_path/'run.yaml'
    f.write_text("data: {mix_alpha: [\n")
    r = compass('config', '--config', str(f))
    assert r.returncode == 2 and 'run.yaml: cannot parse' in r.stderr

def test_data_stage_on_synthetic_corpus_writes_run_folder(tmp_path):
    run = tmp_path/'run'
    r = compass('data', '--preset', 'tiny', '--data-dir', 'synthetic', '--run-dir', str(run))
    assert r.returncode == 0, r.stderr
    saved = yaml.safe_load((run/'config.yaml').read_text())
    assert saved['data_dir'] == 'synthetic' and saved['preset'] == 'tiny'
    for f in ['report.md', 'report.png', 'mix.png', 'summary.json']: assert (run/'data'/f).is_file(), f

@pytest.mark.skipif(not os.environ.get('COMPASS_DATA_DIR'), reason="needs the real data directory (COMPASS_DATA_DIR)")
def test_run_tiny_on_real_data_writes_every_stage(tmp_path):
    run = tmp_path/'run'
    r = compass('run', '--preset', 'tiny', '--run-dir', str(run), '--set', 'data.max_docs_per_source=60')
    assert r.returncode == 0, r.stderr[-3000:]
    for f in ['config.yaml', 'data/report.md', 'tokenizer/tokenizer.json', 'eval/tokenizer_eval.json', 'model/config.json',
              'metrics.jsonl', 'eval/bpb.json', 'report.md']:
        assert (run/f).is_file(), f
    assert 'Tokenizer fertility' in (run/'report.md').read_text()
    assert 'mean_bpb: ' in r.stdout or '"mean_bpb"' in r.stdout  # the eval stage's summary reaches the console

def test_sft_then_chat_and_generate_from_the_command_line(tmp_path):
    "compass run (tiny, synthetic) → compass sft → compass chat (stdin) and compass generate (file → JSONL)."
    run = tmp_path/'run'
    r = compass('run', '--preset', 'tiny', '--data-dir', 'synthetic', '--run-dir', str(run))
    assert r.returncode == 0, r.stderr[-3000:]
    md = (run/'report.md').read_text()   # the embedded corpus's own evaluation: bpb, tasks against chance, generations
    for h in ('## The run', '## Bits per byte (synthetic held-out)', '| chance | majority |', 'synthetic_category_zh_Hant', '## Generations'):
        assert h in md, h
    saved = (run/'config.yaml').read_bytes()
    r = compass('train', '--preset', 'laptop', '--run-dir', str(run))          # #23: another preset on a trained run
    assert r.returncode == 2 and 'trained with another configuration' in r.stderr and 'tokenizer.vocab_size: 4096 -> 16384' in r.stderr, r.stderr[-2000:]
    assert 'Traceback' not in r.stderr and (run/'config.yaml').read_bytes() == saved   # refused before writing anything
    r = compass('sft', '--run-dir', str(run))  # no --preset: the run folder's saved (tiny) configuration is used
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run/'sft'/'config.json').is_file() and (run/'sft'/'sft_summary.json').is_file()
    assert yaml.safe_load((run/'config.yaml').read_text())['preset'] == 'tiny'
    exe = shutil.which('compass') or str(Path(sys.executable).parent/'compass')
    c = subprocess.run([exe, 'chat', '--run-dir', str(run), '--max-new-tokens', '5'], input="hello\n/think\nwhy?\n/exit\n",
                       capture_output=True, text=True, timeout=600)
    assert c.returncode == 0, c.stderr[-3000:]
    assert 'fast mode' in c.stdout and 'deep' in c.stdout and 'Traceback' not in c.stderr
    (tmp_path/'p.txt').write_text("Barangnya bagus\nSản phẩm tệ\n")
    g = compass('generate', str(tmp_path/'p.txt'), '--out', str(tmp_path/'out.jsonl'), '--run-dir', str(run), '--max-new-tokens', '4')
    assert g.returncode == 0, g.stderr[-3000:]
    assert len((tmp_path/'out.jsonl').read_text().splitlines()) == 2
    bad = compass('generate', str(tmp_path/'missing.txt'), '--out', str(tmp_path/'o.jsonl'), '--run-dir', str(run))
    assert bad.returncode == 2 and 'missing.txt' in bad.stderr and 'Traceback' not in bad.stderr
    # a stopped `compass sft` exits 130 with a checkpoint, like `compass train` (#23)
    import signal, time
    p = subprocess.Popen([exe, 'sft', '--run-dir', str(run), '--set', 'sft.steps=5000', '--set', 'sft.log_every=1'],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (run/'sft_train'/'metrics.jsonl').is_file() and time.time() - t0 < 300 and p.poll() is None: time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 130, err[-2000:]
    assert any((run/'sft_train'/'checkpoints').glob('step_*')) and 'Traceback' not in err
