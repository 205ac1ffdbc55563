"""End-to-end: the real `nasopt` command on a phantom subset, in a scratch folder."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import optuna
import pytest

from tests.conftest import assert_user_error, nasopt, small


def test_search_runs_trials_into_sqlite_and_resumes(tmp_path, cache_dir):
    first = nasopt(tmp_path, "search", "--study", "demo", "--n-trials", "2", *small(cache_dir))
    assert first.returncode == 0, first.stderr
    assert "Pareto front of study 'demo' (2 complete trials)" in first.stdout
    assert "test fold 0 held out" in first.stdout

    db = tmp_path / "storage" / "nasopt.db"  # the default storage, relative to the working folder
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{db}")
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert [t.number for t in trials] == [0, 1]
    assert study.metric_names == ["val_auc", "params"]  # studies/demo.toml's objectives
    for t in trials:
        a = t.user_attrs
        assert {"stages", "cbam_stem", "cbam_stages", "margin"} <= set(a["arch"])
        for m in ("accuracy", "sensitivity", "specificity", "f1", "auc"):
            assert f"val_{m}" in a
        assert t.values == [a["val_auc"], a["params"]]
        assert len(a["curve"]) == 1 and a["curve"][0]["epoch"] == 1
        assert (tmp_path / "storage" / "artifacts" / a["artifact_weights"]).is_file()
    assert any(cache_dir.glob("phantom-*.safetensors"))  # prepared on first use

    second = nasopt(tmp_path, "search", "--study", "demo", "--n-trials", "1", *small(cache_dir))
    assert second.returncode == 0, second.stderr
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{db}")
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert len(optuna.get_all_study_summaries(f"sqlite:///{db}")) == 1

    budget = nasopt(tmp_path, "search", "--study", "demo", "--max-trials", "3", *small(cache_dir))
    assert budget.returncode == 0 and "study 'demo': 3 complete trials (budget 3)" in budget.stdout
    assert len(optuna.load_study(study_name="demo", storage=f"sqlite:///{db}").trials) == 3

    front = nasopt(tmp_path, "front", "--study", "demo")
    assert front.returncode == 0 and "Pareto front of study 'demo' (3 complete trials)" in front.stdout

    changed = nasopt(
        tmp_path, "search", "--study", "demo", "--n-trials", "1", *small(cache_dir), "--set", "train.epochs=2"
    )
    assert_user_error(changed, "different configuration")


def test_result_lines_never_wrap_whatever_the_path_length_or_terminal(tmp_path):
    from tests.test_source_nodulemnist3d import medmnist_arrays, write_npz

    npz = write_npz(tmp_path / "nodulemnist3d.npz", medmnist_arrays(side=28))
    cache = tmp_path / ("c" * 100) / ("a" * 100) / ("d" * 100)
    cache = cache.parent / ("e" * (300 - len(str(cache.parent)) - 1))
    assert len(str(cache)) == 300
    env = dict(os.environ, COLUMNS="40")  # narrower than any result line
    args = ["data", "prepare", "--source", "nodulemnist3d", "--npz", str(npz), "--set", f'data.cache_dir="{cache}"']
    proc = subprocess.run(
        [sys.executable, "-m", "nasopt", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr
    (line,) = [line for line in proc.stdout.splitlines() if "nodules" in line]
    assert line.startswith(str(cache)) and line.endswith("predefined folds [0, 1, 2]")


def test_bad_study_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepochz = 1\n")
    assert_user_error(nasopt(tmp_path, "search", "--config", str(bad)), "bad.toml", "train.epochz", "unknown key")


def test_unknown_sampler(tmp_path):
    assert_user_error(nasopt(tmp_path, "search", "--sampler", "cmaes"), "--sampler", "nsga2")


def test_unreachable_storage_never_prints_its_password(tmp_path):
    url = "postgresql+psycopg://nasopt:s3cr3t-pw@127.0.0.1:9/studies"
    proc = nasopt(tmp_path, "search", "--storage", url, "--n-trials", "1")
    err = assert_user_error(proc, "cannot open storage", "127.0.0.1:9")
    assert "s3cr3t-pw" not in proc.stdout + proc.stderr and "***" in err


def test_storage_url_from_environment_is_redacted_too(tmp_path):
    env = dict(os.environ, NASOPT_STORAGE="mysql://u:hunter22@")
    proc = subprocess.run(
        [sys.executable, "-m", "nasopt", "front"], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert_user_error(proc, "storage")
    assert "hunter22" not in proc.stdout + proc.stderr


def test_real_data_source_without_prepared_files(tmp_path, cache_dir):
    proc = nasopt(
        tmp_path, "search", "--set", 'data.source="luna16"', "--set", f'data.cache_dir="{tmp_path}"', "--n-trials", "1"
    )
    assert_user_error(proc, "no prepared luna16 data", "nasopt data prepare --source luna16 --luna-root DIR")


def test_missing_study(tmp_path):
    # Reading commands never leave an empty database behind where there was none.
    assert_user_error(nasopt(tmp_path, "front", "--study", "nope"), "no study database at storage/nasopt.db")
    assert not (tmp_path / "storage").exists()


def test_a_diverging_trial_fails_with_its_reason_and_the_search_goes_on(tmp_path, cache_dir):
    proc = nasopt(
        tmp_path,
        "search",
        "--study",
        "nan",
        "--n-trials",
        "2",
        *small(cache_dir),
        "--set",
        "space.lr=[1e30, 1e30]",
        "--set",
        "space.batch_sizes=[8]",
    )
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="nan", storage=f"sqlite:///{tmp_path}/storage/nasopt.db")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2  # both ran
    assert "training loss became" in proc.stdout
    assert "Traceback" not in proc.stderr  # the trial's own line says why; no stack for it
    assert "lower the learning rate" in study.trials[0].user_attrs["fail_reason"]


def test_cuda_device_on_a_machine_without_one(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert_user_error(nasopt(tmp_path, "search", "--device", "cuda", "--n-trials", "1"), "no CUDA GPU", "--device cpu")


def test_prepared_real_source_is_searched_unchanged(tmp_path):
    from tests.test_source_nodulemnist3d import SIZES, medmnist_arrays, write_npz

    arrays = medmnist_arrays(side=28)
    for split in SIZES:  # both classes in every split, so validation AUC is defined
        arrays[f"{split}_labels"][:, 0] = np.arange(SIZES[split]) % 2
    npz = write_npz(tmp_path / "nodulemnist3d.npz", arrays)
    cache = ["--set", f'data.cache_dir="{tmp_path / "cache"}"']
    prep = nasopt(tmp_path, "data", "prepare", "--source", "nodulemnist3d", "--npz", str(npz), *cache)
    assert prep.returncode == 0, prep.stderr
    assert "10 nodules" in prep.stdout and "predefined folds [0, 1, 2]" in prep.stdout

    wrong = nasopt(
        tmp_path, "search", "--study", "mnist", "--n-trials", "1", *cache, "--set", 'data.source="nodulemnist3d"'
    )
    assert_user_error(wrong, "set split.test_fold=2 and split.val_fold=1")
    proc = nasopt(
        tmp_path,
        "search",
        "--study",
        "mnist",
        "--n-trials",
        "1",
        *cache,
        "--set",
        'data.source="nodulemnist3d"',
        "--set",
        "split.test_fold=2",
        "--set",
        "split.val_fold=1",
        "--set",
        "train.epochs=1",
        "--set",
        "space.batch_sizes=[4]",
        "--set",
        "space.widths=[4]",
    )
    assert proc.returncode == 0, proc.stderr
    assert "10 nodulemnist3d nodules; search trains on 5, validates on 2 (fold 1); test fold 2 held out" in proc.stdout


def test_bad_real_input_is_one_line_and_leaves_no_cache(tmp_path):
    npz = tmp_path / "broken.npz"
    np.savez(npz, train_images=np.zeros((2, 28, 28, 28), np.uint8))
    cache = tmp_path / "cache"
    proc = nasopt(
        tmp_path,
        "data",
        "prepare",
        "--source",
        "nodulemnist3d",
        "--npz",
        str(npz),
        "--set",
        f'data.cache_dir="{cache}"',
    )
    assert_user_error(proc, "broken.npz")
    assert not cache.exists() or not any(cache.glob("*.safetensors"))
    missing = nasopt(tmp_path, "data", "prepare", "--source", "luna16", "--luna-root", str(tmp_path / "nowhere"))
    assert_user_error(missing, "nowhere")
    no_root = nasopt(tmp_path, "data", "prepare", "--source", "lidc")
    assert_user_error(no_root, "--dicom-root DIR")


def test_launch_runs_several_workers_on_one_study(tmp_path, cache_dir):
    args = small(cache_dir)[:-2]  # without --threads 2: the launcher gives each worker one of the cores
    proc = nasopt(tmp_path, "launch", "--workers", "2", "--study", "many", "--max-trials", "3", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Both workers started under their index; which of them trains which trial is a race, not asserted.
    assert "[w0] worker index 0:" in proc.stdout and "[w1] worker index 1:" in proc.stdout
    # One Pareto front, printed by the launcher once both workers are done.
    assert proc.stdout.count("Pareto front of study 'many'") == 1
    assert "[w" not in proc.stdout.split("Pareto front of study")[1]
    study = optuna.load_study(study_name="many", storage=f"sqlite:///{tmp_path}/storage/nasopt.db")
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 3  # the budget is exact, whatever the number of workers
    assert len({t.user_attrs["arch_summary"] + str(t.params["lr"]) for t in complete}) == len(complete)


def test_launch_reports_a_failing_worker_with_its_status(tmp_path):
    proc = nasopt(tmp_path, "launch", "--workers", "2", "--study", "x", "--config", "missing.toml")
    assert proc.returncode == 2
    assert "[w0] exited with status 2" in proc.stderr and "[w1] exited with status 2" in proc.stderr
    assert "missing.toml: no such study file" in proc.stdout
    # Options every worker would refuse are refused once, by the launcher, before any starts.
    refused = nasopt(tmp_path, "launch", "--workers", "2", "--study", "x", "--sampler", "nope")
    assert_user_error(refused, "--sampler 'nope'")
    assert "[w0]" not in refused.stdout + refused.stderr


def test_worker_commands_split_threads_seeds_and_gpus(monkeypatch):
    from nasopt.cli.launch import worker_commands
    from nasopt.search.worker import Budget, WorkerOptions

    opts = WorkerOptions(study="s", overrides=("train.epochs=1", "data.max_scans=60"), budget=Budget(max_trials=4))
    cmds = worker_commands(3, opts, cpus=8, gpus=2)
    assert [c[c.index("--worker-index") + 1] for c in cmds] == ["0", "1", "2"]
    assert all(c[c.index("--threads") + 1] == "2" for c in cmds)
    assert [c[c.index("--device") + 1] for c in cmds] == ["cuda:0", "cuda:1", "cuda:0"]
    assert all(c[c.index("--max-trials") + 1] == "4" and c.count("--set") == 2 for c in cmds)
    mine = worker_commands(2, WorkerOptions(threads=3, device="cpu"), cpus=8, gpus=2)
    assert all(c[c.index("--threads") + 1] == "3" and c[c.index("--device") + 1] == "cpu" for c in mine)
    # What a worker parses back from its command line is what the launcher was given.
    from typer.testing import CliRunner

    from nasopt.cli import app as cli

    parsed = []
    monkeypatch.setattr(cli, "_run_worker", parsed.append)  # the options, not a whole search
    CliRunner().invoke(cli.app, cmds[1][3:], catch_exceptions=False)
    assert parsed == [dataclasses.replace(opts, index=1, threads=2, device="cuda:1")]


def test_ctrl_c_marks_the_running_trial_failed_and_the_study_resumes(tmp_path, cache_dir):
    import signal
    import time

    # 1000 epochs: the trial cannot finish before the signal, however fast or slow the machine.
    args = [
        sys.executable,
        "-m",
        "nasopt",
        "search",
        "--study",
        "stop",
        "--n-trials",
        "2",
        *small(cache_dir),
        "--set",
        "train.epochs=1000",
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # A shell that starts a job in the background without job control (`.ci/run &`) hands it
    # SIGINT ignored, and Python then never raises KeyboardInterrupt: restore the default.
    proc = subprocess.Popen(
        args,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    for line in proc.stdout:  # the study exists once the worker is ready
        if "held out" in line:
            break
    db = f"sqlite:///{tmp_path}/storage/nasopt.db"
    deadline = time.monotonic() + 300
    while not optuna.load_study(study_name="stop", storage=db).get_trials(states=(optuna.trial.TrialState.RUNNING,)):
        assert time.monotonic() < deadline and proc.poll() is None, "no trial started"
        time.sleep(0.1)  # polling for a state, not waiting for a time
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted; run the same command again to resume" in err and "Traceback" not in err
    study = optuna.load_study(study_name="stop", storage=f"sqlite:///{tmp_path}/storage/nasopt.db")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL]
