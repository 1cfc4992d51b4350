"Checkpoint conversion (87_convert): released Qwen2-MoE / Qwen3-MoE / OLMoE into Compass and Compass back out, exact."
import json
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast
from compass_nbdev.core import ConfigError
from compass_nbdev.model import CompassConfig, CompassForCausalLM, model_stats
from compass_nbdev.convert import (save_random_hf, import_hf, export_hf, read_hf_config, compass_config_from_hf,
                                   hf_config_from_compass)

TOL = 1e-5
SOURCES = {   # awkward on purpose: a leading dense layer, head_dim != hidden/heads, biases, renormalised or not
    'qwen2_moe': dict(num_hidden_layers=3, mlp_only_layers=[0], norm_topk_prob=False),
    'qwen3_moe': dict(num_hidden_layers=3, mlp_only_layers=[0], head_dim=24, attention_bias=True, norm_topk_prob=True),
    'olmoe': dict(num_hidden_layers=2, norm_topk_prob=False, num_experts_per_tok=3),
}


def _tokenizer(folder, vocab=256):
    "A throwaway word-level tokenizer saved into `folder` (to check that tokenizer files travel)."
    from tokenizers import Tokenizer, models, pre_tokenizers
    t = Tokenizer(models.WordLevel({f'w{i}': i for i in range(vocab - 1)} | {'<unk>': vocab - 1}, unk_token='<unk>'))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=t, unk_token='<unk>').save_pretrained(folder)


def _logits_and_greedy(model, x):
    with torch.no_grad(): lg = model.eval()(x).logits
    return lg, model.generate(x[:1, :5], max_new_tokens=10, do_sample=False, pad_token_id=0)


@pytest.fixture(scope='module')
def x():
    return torch.randint(0, 256, (3, 13), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize('layout', list(SOURCES))
def test_import_matches_source(layout, tmp_path, x):
    src = save_random_hf(layout, tmp_path/'src', seed=3, **SOURCES[layout])
    _tokenizer(src)
    out = import_hf(src, tmp_path/'compass')
    ref = AutoModelForCausalLM.from_pretrained(src)
    got = CompassForCausalLM.from_pretrained(out)
    assert type(ref).__name__.lower().startswith(layout.replace('_', '')[:5]) and got.config.model_type == 'compass'
    (a, ga), (b, gb) = _logits_and_greedy(ref, x), _logits_and_greedy(got, x)
    assert (a - b).abs().max().item() < TOL and a.abs().max() > 0.1
    assert torch.equal(ga, gb)
    assert AutoTokenizer.from_pretrained(out)('w3 w7')['input_ids'] == [3, 7]
    assert sum(p.numel() for p in got.parameters()) == model_stats(got.config)['total']


def test_import_config_switches(tmp_path):
    c2 = compass_config_from_hf(read_hf_config(save_random_hf('qwen2_moe', tmp_path/'q2', mlp_only_layers=[0, 1], num_hidden_layers=3)))
    assert (c2.qk_norm, c2.qkv_bias, c2.o_bias, c2.shared_expert_gate, c2.n_shared_experts, c2.first_k_dense) == (None, True, False, True, 2, 2)
    c3 = compass_config_from_hf(read_hf_config(save_random_hf('qwen3_moe', tmp_path/'q3')))
    co = compass_config_from_hf(read_hf_config(save_random_hf('olmoe', tmp_path/'ol', attention_bias=True)))
    assert (c3.qk_norm, c3.n_shared_experts, co.qk_norm, co.qkv_bias, co.o_bias, co.moe_intermediate_size) == ('head', 0, 'full', True, True, 32)


@pytest.mark.parametrize('bad, key', [(dict(use_sliding_window=True), 'use_sliding_window'), (dict(hidden_act='gelu'), 'hidden_act'),
                                      (dict(rope_parameters=dict(rope_type='yarn', rope_theta=1e4, factor=4.0)), 'rope_parameters'),
                                      (dict(clip_qkv=8.0), 'clip_qkv'), (dict(mlp_only_layers=[1]), 'mlp_only_layers'),
                                      (dict(decoder_sparse_step=2), 'mlp_only_layers'), (dict(model_type='mixtral'), 'model_type'),
                                      (dict(shared_expert_intermediate_size=48), 'shared_expert_intermediate_size')])
def test_import_refuses_by_name(bad, key, tmp_path):
    src = save_random_hf('qwen2_moe', tmp_path/'src', num_hidden_layers=3)
    cfg = json.loads((src/'config.json').read_text())
    (src/'config.json').write_text(json.dumps({**cfg, **bad}))
    with pytest.raises(ConfigError, match=key): import_hf(src, tmp_path/'out')
    assert not (tmp_path/'out').exists()                        # nothing half-written


def test_import_refuses_unknown_tensors(tmp_path):
    from safetensors.torch import save_file
    src = save_random_hf('qwen3_moe', tmp_path/'src')
    sd = load_file(src/'model.safetensors'); sd['model.layers.0.mlp.experts.0.extra.weight'] = torch.ones(2)
    save_file(sd, src/'model.safetensors', metadata={'format': 'pt'})
    with pytest.raises(ConfigError, match='extra.weight'): import_hf(src, tmp_path/'out')


def _native(tmp_path, seed=1, **kw):
    torch.manual_seed(seed)
    m = CompassForCausalLM(CompassConfig(vocab_size=256, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                         num_hidden_layers=3, moe_intermediate_size=16, **kw))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith('bias'): p.normal_(0, 0.1)
            elif p.dim() == 1: p.uniform_(0.5, 1.5)                  # norm scales
    m.save_pretrained(tmp_path/'native'); _tokenizer(tmp_path/'native')
    return m, tmp_path/'native'


@pytest.mark.parametrize('layout, kw', [
    ('qwen2_moe', dict(qk_norm=None, n_shared_experts=2, qkv_bias=True, first_k_dense=1)),        # ungated: g = 0, down doubled
    ('qwen2_moe', dict(qk_norm=None, n_shared_experts=1, shared_expert_gate=True, first_k_dense=0, tie_word_embeddings=False)),
    ('qwen2_moe', dict(qk_norm=None, n_shared_experts=0, first_k_dense=2)),                        # zero-width shared expert
    ('qwen3_moe', dict(n_shared_experts=0, first_k_dense=1, norm_topk_prob=False)),
    ('qwen3_moe', dict(n_shared_experts=0, first_k_dense=0, qkv_bias=True, head_dim=24)),          # o bias exported as zeros
])
def test_export_matches_compass(layout, kw, tmp_path, x):
    m, d = _native(tmp_path, **kw)
    out = export_hf(d, tmp_path/'hf', layout)
    hm, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info                          # no missing, unexpected or mismatched tensor
    assert hm.config.model_type == layout and not list(out.glob('*.py'))   # plain transformers, no remote code
    (a, ga), (b, gb) = _logits_and_greedy(m, x), _logits_and_greedy(hm, x)
    assert (a - b).abs().max().item() < TOL and a.abs().max() > 0.1
    assert torch.equal(ga, gb)
    assert AutoTokenizer.from_pretrained(out)('w5')['input_ids'] == [5]


@pytest.mark.parametrize('layout', ['qwen2_moe', 'qwen3_moe'])
def test_round_trip_is_identity(layout, tmp_path):
    "A released checkpoint through Compass and back has the very same tensors and config fields."
    src = save_random_hf(layout, tmp_path/'src', seed=5, num_hidden_layers=3, mlp_only_layers=[0])
    back = export_hf(import_hf(src, tmp_path/'c'), tmp_path/'back', layout)
    a, b = load_file(src/'model.safetensors'), load_file(back/'model.safetensors')
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca, cb = (json.loads((p/'config.json').read_text()) for p in (src, back))
    for k in ('num_experts', 'num_experts_per_tok', 'norm_topk_prob', 'mlp_only_layers', 'head_dim', 'intermediate_size', 'moe_intermediate_size'):
        assert ca.get(k, cb[k]) == cb[k], k


@pytest.mark.parametrize('kw, layout, key', [
    (dict(), 'qwen3_moe', 'n_shared_experts'), (dict(), 'qwen2_moe', 'qk_norm'),
    (dict(qk_norm='full', n_shared_experts=0), 'qwen3_moe', 'qk_norm'),
    (dict(qk_norm=None, o_bias=True), 'qwen2_moe', 'o_bias'),
    (dict(qk_norm=None, head_dim=8), 'qwen2_moe', 'head_dim'),
    (dict(n_shared_experts=0, capacity_factor=1.0), 'qwen3_moe', 'capacity_factor'),
    (dict(n_shared_experts=0, n_routed_experts=0, num_experts_per_tok=0, first_k_dense=4), 'qwen3_moe', 'n_routed_experts'),
    (dict(n_shared_experts=0), 'mixtral', 'layout'),
])
def test_export_refuses_by_name(kw, layout, key):
    with pytest.raises(ConfigError, match=key): hf_config_from_compass(CompassConfig(**kw), layout)


def test_export_refuses_aux_free_bias(tmp_path):
    m, d = _native(tmp_path, n_shared_experts=0, balance='aux_free')
    export_hf(d, tmp_path/'zero_bias')                            # a zero bias changes nothing: exported
    m.moe_layers()[0].balance_bias[3] = 0.5; m.save_pretrained(d)
    with pytest.raises(ConfigError, match='balance'): export_hf(d, tmp_path/'hf')
    assert not (tmp_path/'hf').exists()


def test_old_checkpoint_still_loads_with_default_switches(tmp_path):
    from pathlib import Path
    d = Path(__file__).parent/'fixtures'/'model_v0'
    m = CompassForCausalLM.from_pretrained(d).eval()
    assert (m.config.qk_norm, m.config.qkv_bias, m.config.o_bias, m.config.shared_expert_gate) == ('head', False, False, False)
    with pytest.raises(ConfigError, match='qwen3_moe has no shared'): export_hf(d, tmp_path/'never')


def test_cli_convert_both_ways_and_clear_refusal(tmp_path, capsys):
    from compass_nbdev.cli import main
    save_random_hf('qwen3_moe', tmp_path/'released')
    assert main(['convert', str(tmp_path/'released'), str(tmp_path/'c')]) == 0
    assert json.loads((tmp_path/'c'/'config.json').read_text())['model_type'] == 'compass'
    assert main(['convert', str(tmp_path/'c'), str(tmp_path/'back')]) == 0      # default --to qwen3_moe
    assert load_file(tmp_path/'back'/'model.safetensors').keys() == load_file(tmp_path/'released'/'model.safetensors').keys()
    capsys.readouterr()
    assert main(['convert', str(tmp_path/'c'), str(tmp_path/'q2'), '--to', 'qwen2_moe']) == 2
    err = capsys.readouterr().err
    assert 'compass: error: qk_norm' in err and 'Traceback' not in err and not (tmp_path/'q2').exists()
    assert main(['convert', str(tmp_path/'released'), str(tmp_path/'x'), '--to', 'qwen2_moe']) == 2
