import optuna
import pytest

from nasopt.config.schema import SpaceSection
from nasopt.model import PAPER_DEFAULT, Architecture
from nasopt.search.space import decode, repair_depth, suggest


def _genome(space: SpaceSection, blocks, widths, cbam=True, margin=2):
    params = {"cbam_stem": cbam, "margin": margin, "lr": 1e-3, "batch_size": 8}
    for s in range(space.stages):
        params[f"blocks_{s}"] = blocks[s]
        params[f"cbam_{s}"] = cbam
        for b in range(space.blocks_per_stage[1]):
            params[f"width_{s}_{b}"] = widths[s][b]
    return params


def test_repair_depth_trims_deepest_and_grows_shallowest():
    assert repair_depth([4, 4, 4], 3, 9) == [3, 3, 3]
    assert repair_depth([1, 4, 4], 3, 9) == [1, 4, 4]
    assert repair_depth([4, 1, 4], 3, 9) == [4, 1, 4]
    assert repair_depth([4, 4, 2], 3, 9) == [4, 3, 2]
    assert repair_depth([1, 1, 1], 5, 9) == [2, 2, 1]


def test_decode_repairs_widths_non_decreasing_and_ignores_unused_slots():
    space = SpaceSection()
    widths = [[64, 8, 128, 4], [16, 32, 4, 4], [8, 8, 8, 8]]
    arch = decode(_genome(space, [2, 2, 1], widths), space)
    assert arch.stages == ((8, 8), (16, 32), (64,))  # the active widths, sorted
    assert arch.depth == 5
    flat = [w for s in arch.stages for w in s]
    assert flat == sorted(flat)
    # Unused slots (index >= blocks) change nothing.
    widths[0][3] = 4
    widths[2][2] = 128
    assert decode(_genome(space, [2, 2, 1], widths), space) == arch


def test_decode_keeps_total_depth_in_range():
    space = SpaceSection()
    arch = decode(_genome(space, [4, 4, 4], [[4] * 4] * 3), space)
    assert arch.depth == 9
    assert [len(s) for s in arch.stages] == [3, 3, 3]


def test_architecture_round_trip():
    arch = Architecture(((4, 8), (8,), (16, 32, 32)), cbam_stem=False, cbam_stages=(True, False, True), margin=3)
    assert Architecture.from_dict(arch.to_dict()) == arch
    assert Architecture.from_dict(PAPER_DEFAULT.to_dict()) == PAPER_DEFAULT
    assert "m3" in arch.summary()


def test_every_trial_suggests_the_same_genome_and_a_valid_architecture():
    space = SpaceSection()
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.NSGAIISampler(population_size=4, seed=1)
    )
    names = set()
    archs = []

    def objective(trial):
        arch, hp = suggest(trial, space)
        names.add(frozenset(trial.params))
        archs.append(arch)
        assert Architecture.from_dict(trial.user_attrs["arch"]) == arch
        assert hp["batch_size"] in space.batch_sizes and space.lr[0] <= hp["lr"] <= space.lr[1]
        return float(arch.depth), float(sum(sum(s) for s in arch.stages))

    study.optimize(objective, n_trials=16)
    assert len(names) == 1  # fixed-length genome: every gene on every trial
    assert len(next(iter(names))) == 3 + 12 + 3 + 1 + 1 + 2
    for arch in archs:
        assert 3 <= arch.depth <= 9
        assert all(1 <= len(s) <= 4 for s in arch.stages)
        flat = [arch.stem_width] + [w for s in arch.stages for w in s]
        assert flat == sorted(flat) and set(flat) <= set(space.widths)
        assert arch.margin in (1, 2, 3, 4)
    assert len({a for a in archs}) > 8  # the sampler explores


def test_architecture_rejects_an_empty_stage():
    with pytest.raises(ValueError):
        Architecture(((4,), ()), True, (True, True), 1)
