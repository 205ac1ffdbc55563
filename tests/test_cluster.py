"""Workers on a cluster: exact budgets, dead and stopped workers, database restarts, every storage
scheme, and where artifacts live. Real processes against real PostgreSQL and SQLite databases.

Nothing here depends on which worker wins a race: each test asserts what holds whatever the
interleaving (the budget, the states, the attribution), and a worker is killed at a point the
test makes certain (a row lock keeps its trial RUNNING), not at a moment it guesses.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psycopg
import pytest
from optuna.trial import FrozenTrial, TrialState, create_trial

from nasopt.search.worker import over_budget, worker_index
from tests.conftest import DEMO, assert_user_error, nasopt, small, trials_now

# After small(): trials of a few seconds, each trained fully (early stopping is tested on its own).
TINY = ["--set", "train.epochs=2", "--set", 'fidelity.strategy="none"']


def _trials(study: str, url: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=study, storage=url).get_trials()


def _states(trials: list[FrozenTrial]) -> dict[TrialState, int]:
    out: dict[TrialState, int] = {}
    for t in trials:
        out[t.state] = out.get(t.state, 0) + 1
    return out


def _assert_budget_met_exactly(trials: list[FrozenTrial], budget: int, killed: int | None = None) -> None:
    states = _states(trials)
    assert states.get(TrialState.COMPLETE, 0) == budget, states
    assert not states.get(TrialState.RUNNING) and not states.get(TrialState.WAITING), states
    assert len({t.number for t in trials}) == len(trials)
    for t in trials:  # a trial the budget had no room for fails before training, saying why
        if t.state == TrialState.FAIL and t.number != killed:
            assert t.user_attrs["fail_reason"].startswith("budget reached"), t.user_attrs


def _popen(cwd: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, COLUMNS="200", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "nasopt", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for(condition, what: str, proc: subprocess.Popen | None = None, limit: float = 600):
    """Poll ``condition`` until it returns something truthy; fail if ``proc`` ends first."""
    end = time.monotonic() + limit  # a hang guard only; no outcome depends on it
    while time.monotonic() < end:
        if found := condition():
            return found
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"worker exited ({proc.returncode}) before {what}: {proc.stdout.read()}")
        time.sleep(0.1)
    pytest.fail(f"no {what} after {limit} s")


# --- Pure rules ---------------------------------------------------------------------------------------


def _t(number: int, state: TrialState) -> FrozenTrial:
    values = [0.5, 1.0] if state == TrialState.COMPLETE else None
    trial = create_trial(state=state, values=values) if state != TrialState.RUNNING else None
    if trial is None:  # create_trial makes finished or waiting trials only
        trial = create_trial(state=TrialState.WAITING)
        trial.state = TrialState.RUNNING
    trial.number = number
    return trial


def test_a_trial_runs_only_while_fewer_earlier_trials_may_complete_than_the_budget():
    C, R, W, F = TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL
    trials = [_t(0, C), _t(1, F), _t(2, R), _t(3, W), _t(4, R)]
    assert not over_budget(trials, 4, 4)  # 0, 2, 3 may complete: room for a fourth
    assert over_budget(trials, 5, 4)  # 0, 2, 3, 4: full, whatever becomes of 5
    assert not over_budget(trials, 0, 1) and over_budget(trials, 1, 1)  # only trials numbered below count
    assert over_budget(trials, 3, 2) and not over_budget(trials, 3, 3)  # failed ones free their place


def test_worker_index_from_flag_then_slurm_then_kubernetes(monkeypatch):
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    assert worker_index() is None
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "7")
    assert worker_index() == 7
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert worker_index() == 3
    assert worker_index(5) == 5


# --- Many workers, one budget ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_four_workers_meet_the_budget_exactly(backend, tmp_path, cache_dir, request):
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else "sqlite:///storage/nasopt.db"
    study = f"four-{backend}"
    args = small(cache_dir)[:-2]  # the launcher gives each worker its share of the cores
    proc = nasopt(tmp_path, "launch", "--workers", "4", "--study", study, "--storage", url, "--max-trials", "8", *args)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "database is locked" not in out and "s3cr3t-pg" not in out
    for i in range(4):  # every worker started under its index, and none reported a failure
        assert f"[w{i}] worker index {i}:" in proc.stdout
    assert "exited with status" not in out
    full_url = url if backend == "postgresql" else f"sqlite:///{tmp_path}/storage/nasopt.db"
    trials = _trials(study, full_url)
    _assert_budget_met_exactly(trials, 8)
    for t in trials:  # every trial names the worker that ran it
        assert t.user_attrs["worker"]["index"] in range(4) and t.user_attrs["worker"]["host"] == socket.gethostname()
    assert proc.stdout.count(f"Pareto front of study '{study}'") == 1
    if backend == "postgresql":  # a server storage's default artifact folder is absolute, printed, and used
        where = tmp_path / "storage" / "artifacts"
        assert optuna.load_study(study_name=study, storage=url).user_attrs["nasopt_artifacts"] == str(where)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        assert all((where / t.user_attrs["artifact_weights"]).is_file() for t in complete)
        assert not (tmp_path / "storage" / "nasopt.db").exists()
        front = nasopt(tmp_path, "front", "--study", study, "--storage", url)
        assert front.returncode == 0 and f"Pareto front of study '{study}' (8 complete trials)" in front.stdout


def test_a_killed_workers_trial_fails_and_its_retry_completes(tmp_path, cache_dir, postgres_url):
    study, budget = "killed", 3
    worker = ["worker", "--study", study, "--storage", postgres_url, "--max-trials", str(budget), "--heartbeat", "2"]
    victim = _popen(tmp_path, *worker, *small(cache_dir), *TINY)

    def victims_running_trial() -> FrozenTrial | None:
        running = trials_now(study, postgres_url, states=(TrialState.RUNNING,))
        # "arch" is recorded once every parameter is suggested: the trial is training.
        mine = (
            t for t in running if t.user_attrs.get("worker", {}).get("pid") == victim.pid and "arch" in t.user_attrs
        )
        return next(mine, None)

    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain) as con:
        while True:
            trial = _wait_for(victims_running_trial, "a running trial of the victim", victim)
            # Lock the trial's row: the victim cannot store it as finished while the test holds it,
            # so a trial seen RUNNING here is still running when the victim dies.
            row = con.execute("SELECT state FROM trials WHERE trial_id = %s FOR NO KEY UPDATE", [trial._trial_id])
            if row.fetchone()[0] == "RUNNING":
                victim.kill()
                victim.wait()
                con.rollback()
                break
            con.rollback()  # it finished meanwhile: wait for its next one
    # Another worker with the same short heartbeat fails the stale trial, retries it and meets the budget.
    rescuer = nasopt(tmp_path, *worker, *small(cache_dir), *TINY)
    assert rescuer.returncode == 0, rescuer.stdout + rescuer.stderr
    trials = _trials(study, postgres_url)
    killed = trials[trial.number]
    assert killed.state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == killed.params
    assert retries[0].user_attrs.get("fail_reason") is None  # the retry does not carry its original's failure
    _assert_budget_met_exactly(trials, budget, killed.number)


def test_sigterm_fails_the_trial_as_stopped_queues_it_again_and_exits(tmp_path, cache_dir):
    url = f"sqlite:///{tmp_path}/storage/nasopt.db"
    # 1000 epochs: the trial cannot finish before the signal, however fast or slow the machine.
    proc = _popen(
        tmp_path, "worker", "--study", "term", "--max-trials", "2", *small(cache_dir), "--set", "train.epochs=1000"
    )

    def running() -> list[FrozenTrial]:
        return trials_now("term", url, states=(TrialState.RUNNING,))

    _wait_for(running, "a running trial", proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)  # a hang guard: the exit takes about a second
    assert proc.returncode == 143, out
    assert "Traceback" not in out
    trials = _trials("term", url)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    stopped, again = trials
    assert stopped.user_attrs["fail_reason"] == "stopped"
    assert again.params == stopped.params and again.system_attrs["failed_trial"] == 0


def test_a_database_outage_costs_a_pause_not_a_worker(tmp_path, cache_dir, postgres):
    study, budget = "restart", 6
    launch = _popen(
        tmp_path, "launch", "--workers", "2", "--study", study, "--storage", postgres.url,
        "--max-trials", str(budget), *small(cache_dir)[:-2], *TINY,
    )  # fmt: skip

    def complete() -> list[FrozenTrial]:
        return trials_now(study, postgres.url, states=(TrialState.COMPLETE,))

    _wait_for(complete, "a complete trial", launch)
    postgres.stop()
    # The server stays down until one storage call has failed three times and waits to be retried
    # again: the proof that the outage caught a call in flight (not two workers between calls),
    # and that the retries, not luck, carried it over seconds of outage.
    seen = []
    for line in launch.stdout:
        seen.append(line)
        if re.search(r"storage: \w+ failed \(.*\); retry 3 in", line):
            break
    else:
        pytest.fail("the workers ended with the database down before a call was retried 3 times: " + "".join(seen))
    postgres.start()
    restarted = time.time()
    out = "".join(seen) + launch.communicate(timeout=900)[0]
    assert launch.returncode == 0, out
    assert "Traceback" not in out
    trials = _trials(study, postgres.url)
    _assert_budget_met_exactly(trials, budget)
    # The run went on across the outage: trials completed after it (each takes seconds).
    assert any(t.datetime_complete.timestamp() > restarted for t in trials if t.state == TrialState.COMPLETE)


# --- Every storage scheme ------------------------------------------------------------------------------


def test_workers_share_a_journal_file(tmp_path, cache_dir):
    url = "journal:///storage/study.log"
    proc = nasopt(tmp_path, "launch", "--workers", "2", "--study", "j", "--storage", url, "--max-trials", "3",
                  *small(cache_dir)[:-2], *TINY)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "storage" / "study.log")))
    trials = optuna.load_study(study_name="j", storage=storage).get_trials()
    _assert_budget_met_exactly(trials, 3)
    # Beside the journal file, like SQLite's.
    assert all((tmp_path / "storage" / "artifacts" / t.user_attrs["artifact_weights"]).is_file()
               for t in trials if t.state == TrialState.COMPLETE)  # fmt: skip


def test_workers_through_the_grpc_storage_proxy(tmp_path, cache_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = f"sqlite:///{tmp_path}/proxied.db"
    proxy = _popen(tmp_path, "storage-proxy", "--storage", db, "--port", str(port))
    try:
        from nasopt.errors import StorageError
        from nasopt.storages.url import open_storage

        def answers() -> bool:
            try:
                return open_storage(f"grpc://127.0.0.1:{port}", heartbeat=None) is not None
            except StorageError:
                return False

        _wait_for(answers, "an answering storage proxy", proxy)
        url = f"grpc://127.0.0.1:{port}"
        proc = nasopt(
            tmp_path, "search", "--study", "g", "--storage", url, "--max-trials", "2", *small(cache_dir), *TINY
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Pareto front of study 'g' (2 complete trials)" in proc.stdout
    finally:
        proxy.terminate()
        proxy.wait(timeout=60)
    _assert_budget_met_exactly(_trials("g", db), 2)  # in the database behind the proxy


def test_no_proxy_at_a_grpc_url_is_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the socket closes
    proc = nasopt(tmp_path, "front", "--study", "x", "--storage", f"grpc://127.0.0.1:{port}")
    assert_user_error(proc, f"127.0.0.1:{port}", "nasopt storage-proxy")


# --- Artifacts: recorded on the study, found from anywhere -------------------------------------------------


def test_artifact_location_is_recorded_and_found_from_another_folder(tmp_path, cache_dir):
    shared = tmp_path / "shared" / "artifacts"
    url = f"sqlite:///{tmp_path}/db/study.db"
    make = tmp_path / "node-a"
    make.mkdir()
    proc = nasopt(make, "search", "--study", "a", "--storage", url, "--artifacts", str(shared), "--n-trials", "2",
                  "--no-front", *small(cache_dir), *TINY)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(list(shared.iterdir())) >= 2 * 4  # weights, predictions and two figures per trial
    other = tmp_path / "node-b"
    other.mkdir()
    out = other / "e.safetensors"
    exported = nasopt(other, "export", "--study", "a", "--storage", url, "--out", str(out))
    assert exported.returncode == 0 and out.is_file(), exported.stderr
    clash = nasopt(make, "search", "--study", "a", "--storage", url, "--artifacts", str(tmp_path / "elsewhere"),
                   "--n-trials", "1", *small(cache_dir), *TINY)  # fmt: skip
    assert_user_error(clash, "--artifacts", str(shared))
    shared.rename(tmp_path / "unmounted")  # as on a host that does not mount the shared folder
    lost = nasopt(other, "export", "--study", "a", "--storage", url, "--out", str(out))
    assert_user_error(lost, str(shared), "cannot reach")


# --- Data preparation: one worker prepares, the others wait ------------------------------------------------


def test_two_workers_without_a_cache_prepare_it_once(tmp_path):
    from nasopt.atomic import file_lock
    from nasopt.config.schema import load_config
    from nasopt.data.prepare import cache_path

    cache = tmp_path / "cache"
    overrides = ["data.max_scans=12", f'data.cache_dir="{cache}"']
    target = cache_path(load_config(DEMO, overrides).data)
    args = ["data", "prepare", "--config", DEMO, *(a for o in overrides for a in ("--set", o))]
    # The test holds the lock first, so both must find the cache missing and wait: no race decides it.
    with file_lock(target.with_name(target.name + ".lock")):
        procs = [_popen(tmp_path, *args) for _ in range(2)]
        logs = [[] for _ in procs]

        def both_waiting() -> bool:
            for proc, log in zip(procs, logs):
                if not any("waiting: another process" in line for line in log):
                    log.append(proc.stdout.readline())
            return all(any("waiting: another process" in line for line in log) for log in logs)

        _wait_for(both_waiting, "both processes waiting for the lock")
    outs = ["".join(log) + proc.communicate(timeout=600)[0] for proc, log in zip(procs, logs)]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum(f"prepared {target}" in out for out in outs) == 1, outs  # one prepared, the other loaded
    assert target.is_file()
