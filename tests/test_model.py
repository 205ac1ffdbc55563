import itertools

import pytest
import torch

from nasopt.model import PAPER_DEFAULT, Architecture, build_network, count_params
from nasopt.model.blocks import CBAM


def _conv(cin, cout, k):
    return cin * cout * k**3


def _bn(c):
    return 2 * c


def _expected_params(arch: Architecture) -> int:
    """Parameter count written out from the architecture definition."""

    def cbam(c):
        h = max(1, c // 4)
        return 2 * c * h + 2 * 27

    w = arch.stem_width
    n = _conv(1, w, 3) + _bn(w) + _conv(w, w, 3) + _bn(w) + (cbam(w) if arch.cbam_stem else 0)
    for widths, has_cbam in zip(arch.stages, arch.cbam_stages):
        n += _conv(w, w, 3) + _bn(w)
        for width in widths:
            n += _conv(w, width, 3) + _bn(width) + _conv(width, width, 3) + _bn(width)
            if width != w:
                n += _conv(w, width, 1) + _bn(width)
            w = width
        n += cbam(w) if has_cbam else 0
    return n + 2 * w


CORNERS = [
    Architecture(((4,), (4,), (4,)), False, (False, False, False), 1),  # shallowest, narrowest
    Architecture(((128, 128, 128), (128, 128, 128), (128, 128, 128)), True, (True, True, True), 4),  # deepest, widest
    Architecture(((4, 4), (4, 8, 8), (8, 8, 16)), True, (True, True, True), 4),  # docs/paper.md 0.03 M
    Architecture(((16, 32), (32, 64), (64, 64, 128)), True, (True, True, True), 2),  # docs/paper.md 1.55 M
]


@pytest.mark.parametrize("arch", CORNERS, ids=["min", "max", "tiny", "mid"])
def test_network_shapes_and_exact_parameter_count(arch):
    net = build_network(arch)
    logits, norm, cos = net(torch.randn(2, 1, 32, 32, 32))
    assert logits.shape == (2, 2) and norm.shape == (2, 1) and cos.shape == (2, 2)
    assert torch.all(cos.abs() <= 1)
    assert torch.allclose(logits, norm * cos)
    assert count_params(net) == _expected_params(arch)


def test_published_sizes_match_paper_table():
    assert round(count_params(build_network(CORNERS[2])) / 1e6, 2) == 0.03
    assert round(count_params(build_network(CORNERS[3])) / 1e6, 2) == 1.54


def test_paper_default_network_builds():
    net = build_network(PAPER_DEFAULT)
    assert count_params(net) == _expected_params(PAPER_DEFAULT)
    assert 27e6 < count_params(net) < 30e6
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 1, 32, 32, 32))[0].shape == (1, 2)


@pytest.mark.parametrize("pattern", list(itertools.product([False, True], repeat=4)))
def test_every_cbam_pattern(pattern):
    arch = Architecture(((4,), (8,), (8, 16)), pattern[0], tuple(pattern[1:]), 3)
    net = build_network(arch)
    places = [p for p, _ in net.cbam_modules()]
    expected = (["stem"] if pattern[0] else []) + [f"stage{i + 1}" for i, on in enumerate(pattern[1:]) if on]
    assert places == expected
    assert count_params(net) == _expected_params(arch)
    assert net(torch.randn(2, 1, 32, 32, 32))[0].shape == (2, 2)


def test_cbam_attention_is_sigmoid_gated_and_readable_by_a_hook():
    torch.manual_seed(0)
    cbam = CBAM(8)
    x = torch.randn(3, 8, 6, 6, 6)
    seen = {}
    handles = [
        cbam.mlp.register_forward_hook(lambda m, i, o: seen.__setitem__("mlp", o)),
        cbam.spatial.register_forward_hook(lambda m, i, o: seen.__setitem__("spatial", o)),
    ]
    y = cbam(x)
    for h in handles:
        h.remove()
    avg, mx = seen["mlp"].chunk(2)
    channel = torch.sigmoid(avg + mx)
    spatial = torch.sigmoid(seen["spatial"])
    assert y.shape == x.shape and channel.shape == (3, 8, 1, 1, 1) and spatial.shape == (3, 1, 6, 6, 6)
    for m in (channel, spatial):
        assert torch.all((m > 0) & (m < 1))
    assert torch.allclose(y, x * channel * spatial, atol=1e-6)
