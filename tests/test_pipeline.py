"Tests of the data stage on datatrove: same results as the lesson's `data.run`, on the local, Ray and Slurm executors."
import gzip, json, os, re
from pathlib import Path

import pytest

from compass_nbdev.core import DataError
from compass_nbdev.data import DataConfig, read_jsonl, run as ref_run
from compass_nbdev import pipeline

DATA_DIR = os.environ.get('COMPASS_DATA_DIR')
needs_data = pytest.mark.skipif(not DATA_DIR, reason='COMPASS_DATA_DIR is not set')

@pytest.fixture(autouse=True)
def no_env_data_dir(monkeypatch):
    monkeypatch.delenv('COMPASS_DATA_DIR', raising=False)

def kept_rows(run_dir:Path)->list[dict]:
    "Records in the stage's clean/ folder (id, text, lang, domain, source, quality), file by file, in file order."
    return [dict(r) for p in sorted((Path(run_dir)/'data'/'clean').glob('*.jsonl.gz')) for r in read_jsonl(p)]

def kept_ids(run_dir:Path)->list[str]: return [r['id'] for r in kept_rows(run_dir)]

def report_tables(run_dir:Path)->str:
    "report.md without its stage-seconds table (the one part that depends on what ran it)."
    return (Path(run_dir)/'data'/'report.md').read_text().split('## Stage seconds')[0]

def same_as_reference(a:Path, sa:dict, b:Path, sb:dict):
    assert kept_ids(b) == kept_ids(a) and len(kept_ids(a)) == sa['kept_docs'] > 0
    assert kept_rows(b) == kept_rows(a)  # texts and quality scores too
    for k in ('docs_in', 'bytes_in', 'kept_docs', 'kept_bytes', 'removed_by_reason', 'lang_flagged', 'split_docs', 'mix',
              'quality', 'clean_docs_per_lang'):
        assert sb[k] == sa[k], k
    assert report_tables(b) == report_tables(a)
    assert (b/'data'/'mix.csv').read_text() == (a/'data'/'mix.csv').read_text()

@pytest.mark.parametrize('workers,tasks', [(1, None), (2, None), (2, 5)])
def test_local_matches_reference_on_synthetic(tmp_path, workers, tasks):
    cfg = DataConfig(synthetic_docs_per_lang=40, num_proc=workers, tasks=tasks)
    sa = ref_run(cfg, tmp_path/'a', 'synthetic')
    sb = pipeline.run(cfg, tmp_path/'b', 'synthetic')
    assert sa['removed_by_reason'], "the synthetic corpus should exercise some filters"
    assert sb['quality']['train_docs'] > 0 and all('quality' in r for r in kept_rows(tmp_path/'b'))
    same_as_reference(tmp_path/'a', sa, tmp_path/'b', sb)

@pytest.mark.parametrize('opts', [{'quality_threshold': 0.3}, {'quality_scale': 'prob', 'quality_threshold': 0.5},
                                  {'quality_score': False}, {'quality_noisy': ['nothing_here']}])
def test_quality_settings_match_reference(tmp_path, opts):
    "Low-quality removal (after dedup, rank or probability scale), no scoring, and a classifier skipped for want of a class."
    cfg = DataConfig(synthetic_docs_per_lang=40, num_proc=2, tasks=3, **opts)
    sa, sb = ref_run(cfg, tmp_path/'a', 'synthetic'), pipeline.run(cfg, tmp_path/'b', 'synthetic')
    assert ('low_quality' in sa['removed_by_reason']) == ('quality_threshold' in opts)
    assert sb['quality'] == sa['quality'] and ('quality' in kept_rows(tmp_path/'b')[0]) == ('train_docs' in sa['quality'])
    same_as_reference(tmp_path/'a', sa, tmp_path/'b', sb)

def test_duplicates_across_tasks_keep_the_first_copy(tmp_path):
    "Exact and near copies in different files (so different tasks) are removed where the lesson removes them."
    text = "Barang bagus sekali, pengiriman cepat dan penjual ramah. Saya akan membeli lagi di toko ini minggu depan."
    near = text.replace('minggu depan', 'bulan depan')
    root = tmp_path/'data'
    for k, texts in enumerate([[text, 'Produk ini kurang bagus, kemasan rusak waktu sampai di rumah saya kemarin.'], [near, text]]):
        p = root/'corpus'/'id'/f's{k}.jsonl'; p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(''.join(json.dumps({'id': f'{k}-{i}', 'text': t}) + '\n' for i, t in enumerate(texts)))
    cfg = DataConfig(num_proc=2, near_dup_threshold=0.5)
    sa, sb = ref_run(cfg, tmp_path/'a', root), pipeline.run(cfg, tmp_path/'b', root)
    assert kept_ids(tmp_path/'b') == ['0-0', '0-1'] == kept_ids(tmp_path/'a')
    assert set(sb['removed_by_reason']) == {'exact_dup', 'near_dup'}
    same_as_reference(tmp_path/'a', sa, tmp_path/'b', sb)

def test_bad_records_raise_or_are_skipped_as_in_the_lesson(tmp_path):
    root = tmp_path/'data'; p = root/'corpus'/'en'/'src.jsonl.gz'; p.parent.mkdir(parents=True)
    good = [json.dumps({'id': str(i), 'text': f'A perfectly fine English sentence number {i} for the test.'}) for i in range(4)]
    p.write_bytes(gzip.compress(('\n'.join(good) + '\n{oops\n').encode()))
    with pytest.raises(DataError, match=r'src.jsonl.gz:5: malformed JSON'): pipeline.run(DataConfig(num_proc=1), tmp_path/'x', root)
    with pytest.warns(UserWarning):
        s = pipeline.run(DataConfig(num_proc=2, on_error='skip'), tmp_path/'y', root)
    assert s['skipped_records'] == 1 and 'src.jsonl.gz:5' in s['skipped_errors'][0]
    assert 'Skipped bad records: 1' in (tmp_path/'y'/'data'/'report.md').read_text()

@needs_data
def test_local_matches_reference_on_shared_slice(tmp_path):
    "A seeded slice of every source of the shared corpus: same kept ids and removal counts per reason."
    cfg = DataConfig(max_docs_per_source=400, num_proc=2)
    sa, sb = ref_run(cfg, tmp_path/'a', DATA_DIR), pipeline.run(cfg, tmp_path/'b', DATA_DIR)
    assert len(sa['removed_by_reason']) >= 5
    same_as_reference(tmp_path/'a', sa, tmp_path/'b', sb)

@pytest.fixture
def ray_cluster():
    "A local Ray cluster on 127.0.0.1 with two worker CPUs, shut down afterwards."
    ray = pytest.importorskip('ray')
    ray.init(num_cpus=2, _node_ip_address='127.0.0.1', include_dashboard=False, log_to_driver=False,
             runtime_env={'env_vars': {'PYTHONPATH': str(Path(pipeline.__file__).parents[1])}})
    yield ray
    ray.shutdown()

def test_ray_matches_local(tmp_path, ray_cluster):
    cfg = DataConfig(synthetic_docs_per_lang=30, num_proc=2)
    sl = pipeline.run(cfg, tmp_path/'local', 'synthetic')
    sr = pipeline.run(cfg.replace(executor='ray'), tmp_path/'ray', 'synthetic')
    assert len(ray_cluster.nodes()) == 1 and ray_cluster.cluster_resources()['CPU'] == 2
    same_as_reference(tmp_path/'local', sl, tmp_path/'ray', sr)
    assert len(list((tmp_path/'ray'/'data'/'work'/'logs'/'clean'/'stats').glob('*.json'))) == 4  # 4 tasks ran on Ray

def test_slurm_writes_job_arrays_without_submitting(tmp_path, monkeypatch):
    import datatrove.executor.slurm as slurm
    subs = []
    def fake_sbatch(contents, retriever, *args):
        subs.append((contents, args)); return str(1000 + len(subs))
    monkeypatch.setattr(slurm, 'launch_slurm_job', fake_sbatch)
    cfg = DataConfig(executor='slurm', num_proc=3, tasks=7, slurm_partition='cpu-long', slurm_time='01:30:00', synthetic_docs_per_lang=10)
    s = pipeline.run(cfg, tmp_path/'r', 'synthetic')
    work = tmp_path/'r'/'data'/'work'/'logs'
    scripts = {n: (work/n/'launch_script.slurm').read_text() for n in pipeline.STAGES}
    assert sorted(s['scripts']) == sorted(str(work/n/'launch_script.slurm') for n in scripts)
    arr = {n: re.search(r'#SBATCH --array=(\S+)', t).group(1) for n, t in scripts.items()}
    assert arr == {'clean': '0-6%3', 'dedup': '0-0%3', 'quality': '0-7%3', 'score': '0-0%3', 'write': '0-6%3', 'report': '0-0%3'}
    for n, t in scripts.items():
        assert '#SBATCH --partition=cpu-long' in t and '#SBATCH --time=01:30:00' in t and f'#SBATCH --job-name=compass-data-{n}' in t
        assert f"launch_pickled_pipeline {work/n/'executor.pik'}" in t and (work/n/'executor.pik').stat().st_size > 0
    # submitted in order, each stage after the one before (every stage also submits a small stats-merging job)
    main = [(c, a) for c, a in subs if 'launch_pickled_pipeline' in c]
    assert [re.search(r'job-name=(\S+)', c).group(1) for c, _ in main] == [f'compass-data-{n}' for n in pipeline.STAGES]
    ids = [str(1001 + subs.index(x)) for x in main]
    for k in range(1, len(main)): assert any(f'--dependency=afterok:{ids[k - 1]}' in a for a in main[k][1]), pipeline.STAGES[k]
    assert not (tmp_path/'r'/'data'/'summary.json').exists()  # nothing ran here

# --- the command line ---------------------------------------------------------------------------------------------

def compass(*args):
    import shutil, subprocess, sys
    exe = shutil.which('compass') or str(Path(sys.executable).parent/'compass')
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=600)

def test_compass_data_runs_the_pipeline_with_workers(tmp_path):
    import yaml
    run = tmp_path/'run'
    r = compass('data', '--preset', 'tiny', '--data-dir', 'synthetic', '--run-dir', str(run), '--workers', '2')
    assert r.returncode == 0, r.stderr
    saved = yaml.safe_load((run/'config.yaml').read_text())['data']
    assert (saved['num_proc'], saved['executor']) == (2, 'local')
    assert list((run/'data'/'work'/'logs'/'clean'/'stats').glob('*.json'))      # datatrove ran it
    for f in ['report.md', 'report.png', 'mix.png', 'summary.json']: assert (run/'data'/f).is_file(), f

@pytest.mark.parametrize('args,msg', [(['--workers', '0'], 'data.num_proc: must be >= 1'),
                                      (['--executor', 'slurm'], "data.executor: executor='slurm' needs Slurm's `sbatch` on PATH")])
def test_compass_data_errors_name_the_key(tmp_path, args, msg):
    r = compass('data', '--preset', 'tiny', '--data-dir', 'synthetic', '--run-dir', str(tmp_path/'r'), *args)
    assert r.returncode == 2 and msg in r.stderr and 'Traceback' not in r.stderr, r.stderr
