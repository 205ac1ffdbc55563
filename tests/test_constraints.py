"""[constraints] and measured latency: a network over a budget never reaches the trainer and ends
infeasible, the front and export hold feasible trials only, optuna-dashboard reads the constraint
values, and every trial records its inference latency on its device."""

from __future__ import annotations

import io
import json
import wsgiref.util

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

import nasopt.search.objective as objective_module
from nasopt.artifacts.record import Key, front, trained
from nasopt.config.schema import load_config
from nasopt.errors import ConfigError
from nasopt.inference.latency import device_name
from nasopt.model import Architecture, build_network, count_params
from nasopt.search.constraints import check_reachable, smallest
from nasopt.search.objective import Objective
from nasopt.search.samplers import make_sampler
from nasopt.search.warmstart import genes
from nasopt.storages.study import create_or_load
from nasopt.storages.url import open_storage
from nasopt.visualization.report import pareto_table
from tests.conftest import assert_user_error, blob_set, nasopt, small

BUDGET = 40_000
TINY = ["study.population_size=4", "train.epochs=1", "space.widths=[4, 16]", "space.batch_sizes=[8]"]
BIG = Architecture(((16, 16), (16, 16), (16, 16)), True, (True, True, True), 2)  # over BUDGET
SMALL = Architecture(((4,), (4,), (4,)), False, (False, False, False), 2)  # within it
CPU = torch.device("cpu")


def _sets():
    ns = blob_set(n=48, seed=4)
    return ns.subset(np.arange(32)), ns.subset(np.arange(32, 48))


@pytest.fixture(scope="module")
def constrained(tmp_path_factory):
    """An NSGA-II study under max_params, with one queued network over the budget and one within
    it, and every call to the trainer counted."""
    cfg = load_config(None, [*TINY, f"constraints.max_params={BUDGET}"])
    assert count_params(build_network(BIG)) > BUDGET >= count_params(build_network(SMALL))
    url = f"sqlite:///{tmp_path_factory.mktemp('constrained')}/s.db"
    study = create_or_load("c", cfg, open_storage(url), make_sampler("nsga2", cfg, 0))
    for arch in (BIG, SMALL):
        study.enqueue_trial(genes(arch, cfg.space, 1e-3, 8))
    fitted: list[int] = []

    def counting_fit(arch, *args, **kwargs):
        fitted.append(count_params(build_network(arch)))
        return real_fit(arch, *args, **kwargs)

    real_fit = objective_module.fit
    objective_module.fit = counting_fit
    try:
        study.optimize(Objective(cfg, *_sets(), CPU), n_trials=10)
    finally:
        objective_module.fit = real_fit
    return study, fitted


def test_no_network_over_max_params_reaches_the_trainer_and_each_ends_infeasible(constrained):
    study, fitted = constrained
    trials = study.get_trials(deepcopy=False)
    assert all(t.state == TrialState.COMPLETE for t in trials)
    over = [t for t in trials if Key.OVER_BUDGET in t.user_attrs]
    assert trials[0] in over and trials[1] not in over  # the queued big and small networks
    assert 0 < len(over) < len(trials)
    assert len(fitted) == len(trials) - len(over) and max(fitted) <= BUDGET
    for t in over:
        value, limit = t.user_attrs[Key.OVER_BUDGET]["params"]
        assert value == t.user_attrs[Key.PARAMS] > limit == BUDGET
        assert t.values[0] == 0.0 and Key.WEIGHTS not in t.user_attrs and Key.CURVE not in t.user_attrs
        assert Key.LATENCY not in t.user_attrs  # latency is no budget here: measured only once trained
    assert all(t.user_attrs[Key.LATENCY] > 0 for t in trials if t not in over)
    # The sampler recorded Optuna's constraint values: relative violation, > 0 exactly when over.
    for t in trials:
        assert t.constraints == {"0": pytest.approx(t.user_attrs[Key.PARAMS] / BUDGET - 1)}
        assert (t.constraints["0"] > 0) == (t in over)


def test_the_front_and_its_table_hold_feasible_trials_only(constrained):
    study, _ = constrained
    on_front = front(study)
    assert on_front and all(t.user_attrs[Key.PARAMS] <= BUDGET for t in on_front)
    assert {t.number for t in on_front} <= {t.number for t in trained(study)}
    # Without the constraint, the untrained small-but-over networks with accuracy 0 could not be
    # on the front anyway; a feasible front must also drop the infeasible ones of high accuracy.
    table = pareto_table(study)
    assert f"{len(study.trials) - len(trained(study))} over budget and not trained" in str(table.title)


def test_optuna_dashboard_serves_the_constraint_values(constrained):
    from optuna_dashboard import wsgi

    study, _ = constrained
    app = wsgi(study._storage)
    environ: dict = {"PATH_INFO": f"/api/studies/{study._study_id}", "wsgi.input": io.BytesIO()}
    wsgiref.util.setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, h, *exc: status.append(s)))
    assert status == ["200 OK"], body[:200]
    served = {t["number"]: t["constraints"] for t in json.loads(body)["trials"]}
    assert served == {t.number: [t.constraints["0"]] for t in study.trials}


def test_latency_is_measured_on_every_trial_and_can_be_an_objective(tmp_path):
    cfg = load_config(None, [*TINY, 'study.objectives=["val_auc", "latency_ms"]'])
    study = create_or_load("lat", cfg, open_storage(f"sqlite:///{tmp_path}/s.db"), make_sampler("nsga2", cfg, 0))
    study.optimize(Objective(cfg, *_sets(), CPU), n_trials=3)
    for t in study.trials:
        a = t.user_attrs
        assert t.state == TrialState.COMPLETE
        assert a[Key.LATENCY] > 0 and a[Key.LATENCY_32] > 0 and a[Key.LATENCY_SECONDS] > 0
        assert a[Key.DEVICE_NAME] == device_name(CPU) and f"{torch.get_num_threads()} thread" in a[Key.DEVICE_NAME]
        assert t.values == [a["val_auc"], a[Key.LATENCY]]
    assert study.directions[1] == optuna.study.StudyDirection.MINIMIZE and front(study)
    assert "ms, batch 1" in [c.header for c in pareto_table(study).columns]


def test_trials_on_two_devices_are_compared_within_one(constrained, tmp_path):
    study, _ = constrained
    copy = optuna.create_study(directions=study.directions)
    for i, t in enumerate(trained(study)):
        attrs = {**t.user_attrs, Key.DEVICE_NAME: "gpu-a" if i % 2 else "gpu-b"}
        copy.add_trial(optuna.trial.create_trial(values=t.values, params=t.params, distributions=t.distributions,
                                                 user_attrs=attrs))  # fmt: skip
    assert "2 devices" in str(pareto_table(copy).caption) and "--device-name" in str(pareto_table(copy).caption)
    only_a = front(copy, "gpu-a")
    assert only_a and {t.user_attrs[Key.DEVICE_NAME] for t in only_a} == {"gpu-a"}
    assert "gpu-a" in str(pareto_table(copy, "gpu-a").caption)
    with pytest.raises(ConfigError, match="--device-name 'gpu-c': no trained trial ran on it; devices: 'gpu-b'"):
        pareto_table(copy, "gpu-c")


def test_the_smallest_network_of_the_space_is_the_smallest():
    space = load_config(None, TINY).space
    floor = count_params(build_network(smallest(space)))
    assert smallest(space) == Architecture(((4,), (4,), (4,)), False, (False,) * 3, 1)
    rng = np.random.default_rng(0)
    for _ in range(20):
        stages = tuple(tuple(sorted(rng.choice(space.widths, rng.integers(1, 4)))) for _ in range(3))
        assert count_params(build_network(Architecture(stages, True, (True,) * 3, 4))) > floor


def test_a_budget_no_network_can_meet_is_refused_before_a_study_exists(tmp_path, cache_dir):
    cfg = load_config(None, [*TINY, "constraints.max_params=100"])
    with pytest.raises(ConfigError, match=r"constraints.max_params = 100: no network of the space meets it"):
        check_reachable(cfg, CPU)
    proc = nasopt(tmp_path, "search", "--study", "c", "--n-trials", "1", *small(cache_dir),
                  "--set", "constraints.max_flops=1000")  # fmt: skip
    assert_user_error(proc, "constraints.max_flops = 1000: no network of the space meets it", "raise it")
    assert not (tmp_path / "storage" / "nasopt.db").exists()


def test_random_search_with_constraints_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="needs sampler nsga2, nsga3 or tpe"):
        load_config(None, ['study.sampler="random"', "constraints.max_params=100000"])
    with pytest.raises(ConfigError, match="--sampler random: the study has"):
        make_sampler("random", load_config(None, ["constraints.max_params=100000"]))


def test_a_constrained_cli_search_exports_only_networks_within_budget(tmp_path, cache_dir):
    """The big and the small queued networks make sure of one trial over and one within."""
    known = tmp_path / "two.toml"
    known.write_text(
        '[[network]]\nname = "big"\nstages = [[16, 16], [16, 16], [16, 16]]\ncbam_stem = true\n'
        "cbam_stages = [true, true, true]\nmargin = 2\n"
        '[[network]]\nname = "small"\nstages = [[4], [4], [4]]\ncbam_stem = false\n'
        "cbam_stages = [false, false, false]\nmargin = 2\n"
    )
    args = ["--study", "c", *small(cache_dir)[:-2], "--set", f"constraints.max_params={BUDGET}"]
    queued = nasopt(tmp_path, "enqueue", "--file", str(known), *args)
    assert queued.returncode == 0, queued.stderr
    proc = nasopt(tmp_path, "search", "--n-trials", "4", "--no-front", "--threads", "2", *args)
    assert proc.returncode == 0, proc.stderr
    assert "trial   0  over budget, not trained: params" in proc.stdout, proc.stdout
    shown = nasopt(tmp_path, "front", "--study", "c")
    assert shown.returncode == 0 and "over budget and not trained" in shown.stdout, shown.stdout
    exported = nasopt(tmp_path, "export", "--study", "c", "--select", "topk", "--k", "6", "--out", "e.safetensors",
                      "--calibration", "none")  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    from nasopt.ensemble.module import load_ensemble

    ensemble = load_ensemble(tmp_path / "e.safetensors")
    assert ensemble.members and all(count_params(m.network) <= BUDGET for m in ensemble.members)
