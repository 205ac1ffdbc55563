import math

import numpy as np
import pytest
import torch

from nasopt.artifacts.checkpoint import CheckpointHeader, build_model
from nasopt.config.schema import TrainSection
from nasopt.inference.core import Member, predict_proba, set_layout
from nasopt.model import Architecture, build_network, count_params
from nasopt.model.blocks import Conv3d
from nasopt.training.fit import TrainingDiverged, fit, lr_factor
from tests.conftest import blob_set

TINY = Architecture(((4,), (8,), (8,)), True, (True, False, True), 2)


def test_fit_learns_a_separable_task_and_reports_everything():
    ns = blob_set(n=160, seed=0)
    cfg = TrainSection(epochs=6, precision="fp32")
    seen = []
    r = fit(
        TINY,
        ns.subset(np.arange(120)),
        ns.subset(np.arange(120, 160)),
        cfg,
        lr=3e-3,
        batch_size=16,
        on_epoch=seen.append,
    )
    assert r.metrics["auc"] > 0.9
    assert set(r.metrics) == {"accuracy", "sensitivity", "specificity", "f1", "auc", "brier", "ece"}
    assert len(r.curve) == 6 == len(seen) and r.curve[-1]["epoch"] == 6
    assert r.curve[-1]["train_loss"] < r.curve[0]["train_loss"]
    assert r.val_prob.shape == (40,) and np.all((r.val_prob >= 0) & (r.val_prob <= 1))
    assert r.params == count_params(build_network(TINY))
    assert r.train_samples_per_s > 0 and math.isfinite(r.norm[0]) and r.norm[1] > 0

    # A network rebuilt from the returned weights, as a checkpoint is loaded, reproduces the
    # validation probabilities exactly, whatever layout training used.
    val = ns.subset(np.arange(120, 160))
    for channels_last in ("auto", False):
        r = fit(
            TINY,
            ns.subset(np.arange(120)),
            val,
            cfg.model_copy(update={"epochs": 1, "channels_last": channels_last}),
            lr=3e-3,
            batch_size=16,
        )
        net = build_model(CheckpointHeader(arch=TINY.to_dict(), norm=r.norm, input_size=32, metrics={}), r.state_dict)
        prob = predict_proba(Member(net, r.norm), torch.from_numpy(val.crops), 32)
        assert np.array_equal(prob.numpy(), r.val_prob)


def test_fit_is_deterministic_under_a_seed():
    ns = blob_set(n=48, seed=1)
    cfg = TrainSection(epochs=1, precision="fp32")
    a, b = (
        fit(TINY, ns.subset(np.arange(32)), ns.subset(np.arange(32, 48)), cfg, lr=1e-3, batch_size=8, seed=5)
        for _ in range(2)
    )
    assert np.array_equal(a.val_prob, b.val_prob)
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)


def test_bf16_autocast_path_trains():
    ns = blob_set(n=40, side=40, seed=2)
    r = fit(
        TINY,
        ns.subset(np.arange(32)),
        ns.subset(np.arange(32, 40)),
        TrainSection(epochs=1, precision="bf16"),
        lr=1e-3,
        batch_size=8,
    )
    assert r.extra["bf16"] is True and math.isfinite(r.curve[0]["train_loss"])


def test_diverging_loss_fails_with_a_reason():
    ns = blob_set(n=32, seed=3)
    with pytest.raises(TrainingDiverged, match="loss became nan|loss became inf"):
        fit(
            TINY,
            ns.subset(np.arange(24)),
            ns.subset(np.arange(24, 32)),
            TrainSection(epochs=3, precision="fp32"),
            lr=1e30,
            batch_size=8,
        )


def test_lr_schedule_is_constant_then_linear():
    factors = [lr_factor(e, 10, 0.5) for e in range(10)]
    assert factors[:5] == [1.0] * 5 and factors[5:] == [1.0, 0.8, 0.6, 0.4, 0.2]
    assert lr_factor(0, 1, 1.0) == 1.0


@pytest.mark.parametrize("setting", ["auto", True, False])
def test_every_layout_computes_the_same_network(setting):
    # auto on CPU: contiguous activations, channels-last convolutions; True: channels-last
    # throughout; False: contiguous throughout. Same outputs and gradients for each.
    torch.manual_seed(0)
    ref, net = build_network(TINY), build_network(TINY)
    net.load_state_dict(ref.state_dict())
    fmt = set_layout(net, setting, torch.device("cpu"))
    assert fmt == (torch.channels_last_3d if setting is True else torch.contiguous_format)
    convs = [m for m in net.modules() if isinstance(m, Conv3d)]
    assert convs and all(m.channels_last_compute == (setting == "auto") for m in convs)
    x = torch.randn(4, 1, 32, 32, 32)
    outs = []
    for model, inp in ((ref, x), (net, x.contiguous(memory_format=fmt))):
        out = model(inp)[0]
        out.sum().backward()
        outs.append((out, model.stem[0][0].weight.grad))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-4)
    assert torch.allclose(outs[0][1], outs[1][1], rtol=1e-3, atol=1e-4)
