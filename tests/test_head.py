import math

import pytest
import torch
import torch.nn.functional as F

from nasopt.model import AngleLinear, AngularMarginLoss
from nasopt.model.head import psi


def _features():
    torch.manual_seed(0)
    head = AngleLinear(16, 2)
    x = torch.randn(32, 16) * 3
    y = torch.randint(0, 2, (32,))
    with torch.no_grad():
        return head(x), y


def test_margin_one_is_cross_entropy_on_norm_cos():
    out, y = _features()
    loss = AngularMarginLoss(margin=1)
    for lam in (1000.0, 5.0, 0.0):
        loss.lam = lam
        assert torch.allclose(loss(out, y), F.cross_entropy(out[1] * out[2], y), atol=1e-6)


@pytest.mark.parametrize("lam", [0.0, 1.0, 5.0])
def test_larger_margin_gives_strictly_larger_loss_while_lambda_is_small(lam):
    out, y = _features()
    losses = []
    for m in (1, 2, 3, 4):
        crit = AngularMarginLoss(margin=m)
        crit.lam = lam
        losses.append(float(crit(out, y)))
    assert losses[3] > losses[0]
    assert all(b >= a for a, b in zip(losses, losses[1:]))


def test_margin_vanishes_when_lambda_is_huge():
    out, y = _features()
    a, b = AngularMarginLoss(margin=4), AngularMarginLoss(margin=1)
    a.lam = b.lam = 1e9
    assert abs(float(a(out, y)) - float(b(out, y))) < 1e-6


def test_psi_is_monotone_and_matches_cos_m_theta():
    theta = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    for m in (2, 3, 4):
        p = psi(torch.cos(theta), m)
        assert torch.all(p[1:] <= p[:-1] + 1e-9), "psi must decrease with theta"
        first = theta < math.pi / m
        assert torch.allclose(p[first], torch.cos(m * theta[first]), atol=1e-6)
        assert torch.all(p <= torch.cos(theta) + 1e-9)


def test_lambda_anneals_to_its_minimum():
    crit = AngularMarginLoss(margin=4, base=1000, gamma=0.12, lambda_min=5)
    lams = []
    for _ in range(5000):
        crit.step()
        lams.append(crit.lam)
    assert lams[0] < 1000 and lams[-1] == 5 and lams == sorted(lams, reverse=True)


def test_margin_changes_gradients():
    torch.manual_seed(1)
    x = torch.randn(8, 4)
    y = torch.ones(8, dtype=torch.long)
    grads = []
    for m in (1, 4):
        head = AngleLinear(4, 2)
        head.weight.data = torch.tensor([[1.0, 0, 0, 0], [0.8, 0.6, 0, 0]])
        crit = AngularMarginLoss(margin=m)
        crit.lam = 0.0
        crit(head(x), y).backward()
        grads.append(head.weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


def test_rejects_unknown_margin():
    with pytest.raises(ValueError):
        AngularMarginLoss(margin=5)
