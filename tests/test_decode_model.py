"The decode bandwidth model of 82_inference_cost: configs, bytes per token, the fit and the crossover."
import pytest
from compass_nbdev.model import model_stats
from compass_nbdev.inference_cost import scaled_configs, decode_bytes, fit_decode, predict_ms, crossover

@pytest.mark.parametrize('s', [1, 3])
def test_scaled_configs_match_active_and_total(s):
    c = scaled_configs('laptop', s)
    assert c['moe'].hidden_size == 128 * s
    assert model_stats(c['dense_total'])['total'] == pytest.approx(model_stats(c['moe'])['total'], rel=0.01)
    assert decode_bytes(c['dense_active']) <= decode_bytes(c['moe']) < 1.01 * decode_bytes(c['dense_active'])  # + the router
    assert decode_bytes(c['dense_total']) > 1.5 * decode_bytes(c['moe'])

def test_fit_recovers_a_known_model_and_finds_the_crossover():
    cfgs = {s: scaled_configs('laptop', s) for s in (1, 2)}
    truth = dict(fixed_ms=1.0, moe_extra_ms=3.0, ms_per_mb=0.05)
    rows = [dict(scale=s, model=m, mb_per_token=decode_bytes(c) / 2**20, ms_per_token=predict_ms(truth, c))
            for s, cs in cfgs.items() for m, c in cs.items()]
    f = fit_decode(rows)
    for k, v in truth.items(): assert f[k] == pytest.approx(v, rel=1e-6)
    x = crossover(f)
    assert x['vs_total'] > 1 and x['vs_active'] < 1  # beats equal total, never its active twin at batch 1
    c = scaled_configs('laptop', x['scale'] - 1)
    assert x['scale'] == 1 or predict_ms(f, c['moe']) >= predict_ms(f, c['dense_total'])  # the first such width
