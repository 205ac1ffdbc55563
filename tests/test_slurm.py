"""The Slurm array scripts under docker/slurm, submitted to a real single-node Slurm started for these tests."""

import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from tests.conftest import DEMO, ROOT, small
from tests.slurm import Slurm, running_slurm

SCRIPTS = ROOT / "docker" / "slurm"


@pytest.fixture(scope="module")
def slurm() -> Iterator[Slurm]:
    with running_slurm() as cluster:
        yield cluster


def task_logs(folder: Path, job_id: str, indices: range) -> dict[int, str]:
    """Each array task's output file (the scripts' ``nasopt-%A_%a.out``), which must exist."""
    logs = {}
    for i in indices:
        path = folder / f"nasopt-{job_id}_{i}.out"
        assert path.is_file(), f"no log for task {i}: {sorted(p.name for p in folder.iterdir())}"
        logs[i] = path.read_text(errors="replace")
    return logs


def test_slurm_array_runs_every_index(slurm: Slurm, tmp_path: Path) -> None:
    """The harness itself: an array job's tasks all run, each with its own index, two at a time on two cores."""
    script = tmp_path / "echo.sbatch"
    script.write_text("#!/bin/bash\n#SBATCH --output=nasopt-%A_%a.out\necho index $SLURM_ARRAY_TASK_ID\n")
    job = slurm.sbatch("--array=0-2", "--cpus-per-task=1", str(script), cwd=tmp_path)
    states = slurm.wait(job)
    assert states == {str(i): ("COMPLETED", "0:0") for i in range(3)}, states
    logs = task_logs(tmp_path, job, range(3))
    assert {i: text.strip() for i, text in logs.items()} == {i: f"index {i}" for i in range(3)}


@pytest.mark.parametrize("script", ["nasopt-array.sbatch", "nasopt-array-cpu.sbatch"])
def test_array_scripts_are_valid_bash_and_need_a_storage(script: str, tmp_path: Path) -> None:
    path = SCRIPTS / script
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    # Outside Slurm and without NASOPT_STORAGE the script stops before starting any worker.
    env = {"PATH": "/usr/bin:/bin", "NASOPT_BIN": "false"}
    proc = subprocess.run(["bash", str(path)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "NASOPT_STORAGE" in proc.stderr


def test_cpu_array_of_workers_fills_one_postgres_study(
    slurm: Slurm, tmp_path: Path, postgres_url: str, cache_dir: Path
) -> None:
    """Three array tasks on two cores share one PostgreSQL study and stop at its budget of four trials."""
    study_name = f"slurm-{uuid.uuid4().hex[:8]}"
    nasopt_bin = Path(sys.executable).with_name("nasopt")  # the venv's entry point: the job runs no `activate`
    assert nasopt_bin.is_file(), nasopt_bin
    overrides = small(cache_dir)[2:-2]  # its --set pairs; --config goes by NASOPT_CONFIG, --threads by the script
    env = {
        "NASOPT_STORAGE": postgres_url,  # in the environment, so the password never is on a command line
        "NASOPT_STUDY": study_name,
        "NASOPT_CONFIG": DEMO,
        "NASOPT_MAX_TRIALS": "4",
        "NASOPT_BIN": str(nasopt_bin),
    }
    job = slurm.sbatch(
        "--array=0-2",
        "--cpus-per-task=1",
        "--export=ALL",
        str(SCRIPTS / "nasopt-array-cpu.sbatch"),
        *overrides,
        cwd=tmp_path,
        env=env,
    )
    states = slurm.wait(job, deadline_s=900)
    logs = task_logs(tmp_path, job, range(3))
    everything = "\n".join(f"--- task {i} ---\n{text}" for i, text in logs.items())
    assert states == {str(i): ("COMPLETED", "0:0") for i in range(3)}, f"{states}\n{everything}"
    for i, text in logs.items():
        # The first line of each worker names the index Slurm gave it (SLURM_ARRAY_TASK_ID).
        assert re.match(rf"worker index {i}: ", text), everything

    study = optuna.load_study(study_name=study_name, storage=postgres_url)
    by_state = {s: [t.number for t in study.trials if t.state == s] for s in optuna.trial.TrialState}
    assert len(by_state[optuna.trial.TrialState.COMPLETE]) == 4, (by_state, everything)  # the budget, never more
    assert not by_state[optuna.trial.TrialState.RUNNING], (by_state, everything)
