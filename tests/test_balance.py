"Balance losses against hand computations; global counts; aux-free bias; load stats."
import math, pytest, torch
from compass_nbdev.core import ConfigError
from compass_nbdev.balance import (aux_loss, z_loss, GlobalCounts, update_bias, load_stats, check_balance_config,
                                   expert_counts)

def test_aux_loss_hand():
    ids = torch.tensor([[0, 1], [0, 1], [0, 2], [0, 3]])
    probs = torch.tensor([[.55, .2, .15, .1]]).expand(4, 4)
    assert math.isclose(aux_loss(probs, ids).item(), 4 * (4/8*.55 + 2/8*.2 + 1/8*.15 + 1/8*.1), rel_tol=1e-6)
    assert math.isclose(aux_loss(torch.full((4, 4), .25), ids).item(), 1.0, rel_tol=1e-6)

def test_aux_loss_gradient_pushes_overloaded_down():
    logits = torch.randn(16, 4, requires_grad=True)
    ids = torch.zeros(16, 1, dtype=torch.long)                  # all to expert 0
    aux_loss(torch.softmax(logits, -1), ids).backward()
    assert (logits.grad[:, 0] > 0).all()                        # gradient descent lowers expert 0's logit

def test_z_loss_hand():
    z = torch.tensor([[1., 2., 3.], [0., 0., 0.]])
    ref = (math.log(math.e + math.e**2 + math.e**3)**2 + math.log(3)**2) / 2
    assert math.isclose(z_loss(z).item(), ref, rel_tol=1e-6)

def test_global_counts_accumulate_and_reset():
    g = GlobalCounts()
    g.add(1, torch.tensor([1, 2])); tot = g.add(1, torch.tensor([3, 0]))
    assert tot.tolist() == [4, 2]
    g.reset(); assert g.counts == {}

def test_update_bias_sign():
    b = torch.zeros(4)
    update_bias(b, torch.tensor([8, 4, 4, 0]), 0.1)
    torch.testing.assert_close(b, torch.tensor([-.1, 0., 0., .1]))

def test_load_stats():
    s = load_stats(torch.tensor([2, 2, 2, 2]))
    assert s['max_over_mean'].item() == 1 and s['cv'].item() == 0
    s = load_stats(expert_counts(torch.tensor([[0], [0], [0], [1]]), 2))
    assert math.isclose(s['max_over_mean'].item(), 1.5) and math.isclose(s['cv'].item(), 0.5)

def test_check_balance_config():
    with pytest.raises(ConfigError, match="balance_scope: 'rank' is not allowed; choose one of micro_batch, global"):
        check_balance_config('aux', 'rank', 0., 0., 0.)
    with pytest.raises(ConfigError, match='z_loss_beta'): check_balance_config('aux', 'global', 0., -1., 0.)
