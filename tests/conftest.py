import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from nasopt.data.noduleset import NoduleSet


def blob_set(n: int = 120, side: int = 40, seed: int = 0, per_patient: int = 2) -> NoduleSet:
    """A learnable toy set: malignant nodules are larger spheres than benign ones."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    grid = np.indices((side,) * 3) - (side - 1) / 2
    r = np.sqrt((grid**2).sum(0))
    crops = rng.normal(-850, 25, (n, side, side, side)).astype(np.int16)
    for i in range(n):
        radius = (5 + 3 * rng.random()) if labels[i] else (2 + 2 * rng.random())
        crops[i][r < radius] = rng.integers(-100, 40)
    meta = [
        {"patient": f"P{i // per_patient:03d}", "scan": f"S{i // per_patient}", "nodule": f"N{i}"} for i in range(n)
    ]
    return NoduleSet(crops, labels.astype(np.int64), meta, source="toy", params={"seed": seed})


@pytest.fixture
def toy_set() -> NoduleSet:
    return blob_set()


def _postgres_bin() -> Path | None:
    """PostgreSQL's server programs: on PATH, else Debian's /usr/lib/postgresql/N/bin."""
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent
    newest = max(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: float(p.parts[-3]), default=None)
    return newest.parent if newest else None


@dataclass(frozen=True)
class Postgres:
    """A running throwaway server: its URL, and ``pg_ctl`` (with its start options) to act on it
    as its own user."""

    url: str
    pg_ctl: list[str]
    options: str

    def stop(self) -> None:
        """``pg_ctl stop -m fast``: every connection is cut; returns once the server is down."""
        subprocess.run([*self.pg_ctl, "stop", "-w", "-m", "fast"], capture_output=True, check=True, timeout=120)

    def start(self) -> None:
        subprocess.run([*self.pg_ctl, "start", "-w", "-o", self.options], capture_output=True, check=True, timeout=120)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A throwaway PostgreSQL server on loopback, with a password; stopped and deleted afterwards."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        message = "PostgreSQL server programs not found (Debian: apt-get install postgresql)"
        if os.environ.get("CI"):  # .ci/run installs it: a missing server there is a failure
            pytest.fail(message)
        pytest.skip(message)
    root = Path(tempfile.mkdtemp(prefix="nasopt-pg-"))  # not under pytest's 0700 tmp: the server user must reach it
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root; Debian's package makes a postgres user
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    password = "s3cr3t-pg"
    (root / "pw").write_text(password)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = root / "db"

    def run(*cmd: object) -> None:
        proc = subprocess.run([*as_user, *map(str, cmd)], capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode:
            pytest.fail(f"{cmd[0]} failed: {proc.stdout}{proc.stderr}")

    pg_ctl = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(db), "-l", str(root / "log")]
    try:
        run(bin_dir / "initdb", "-D", db, "-U", "nasopt", "--pwfile", root / "pw", "--auth", "scram-sha-256")
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(bin_dir / "pg_ctl", "start", "-w", "-D", db, "-l", root / "log", "-o", options)
        yield Postgres(f"postgresql+psycopg://nasopt:{password}@127.0.0.1:{port}/postgres", pg_ctl, options)
    finally:
        subprocess.run([*pg_ctl, "stop", "-m", "immediate"], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres: Postgres) -> str:
    return postgres.url


# --- The real `nasopt` command on a phantom subset, in scratch folders. ---
ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "studies" / "demo.toml")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def nasopt(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="200")  # no line wrapping by rich
    return subprocess.run(
        [sys.executable, "-m", "nasopt", *args], cwd=cwd, capture_output=True, text=True, timeout=900, env=env
    )


def trials_now(study: str, url: str, states=None) -> list:
    """The study's trials while a worker may still be creating the database; ``[]`` until it exists.

    Reads through nasopt's opener, which waits out the race to create the tables that a plain
    ``optuna.load_study`` next to a starting worker can lose ("table trials already exists").
    """
    import optuna

    from nasopt.errors import StorageError
    from nasopt.storages.url import open_storage

    try:
        storage = open_storage(url, heartbeat=None, create=False)
        return optuna.load_study(study_name=study, storage=storage).get_trials(states=states)
    except (KeyError, StorageError):  # no database file or no study yet
        return []


def small(cache_dir: Path) -> list[str]:
    return [
        "--config",
        DEMO,
        "--set",
        "data.max_scans=60",
        "--set",
        "train.epochs=1",
        "--set",
        f'data.cache_dir="{cache_dir}"',
        "--threads",
        "2",
    ]


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.fixture(scope="session")
def searched_study(tmp_path_factory, cache_dir) -> Path:
    """A folder holding a finished 4-trial study ``demo`` (SQLite and artifacts under storage/),
    searched by the real CLI on the demo study file's phantom subset. Treat it as read-only."""
    where = tmp_path_factory.mktemp("searched")
    proc = nasopt(where, "search", "--study", "demo", "--n-trials", "4", "--no-front", *small(cache_dir))
    assert proc.returncode == 0, proc.stderr
    return where


@pytest.fixture(scope="session")
def tiny_ensemble_file(tmp_path_factory) -> Path:
    """An ensemble file of two untrained networks (trials 3 and 7, weights 2 and 1), no search needed."""
    from nasopt.artifacts.checkpoint import CheckpointHeader, Selection
    from nasopt.ensemble.module import save_ensemble
    from nasopt.model import Architecture, build_network

    torch.manual_seed(0)
    archs = [
        Architecture(((4,), (8,), (8,)), True, (True, False, True), 2),
        Architecture(((4,), (4, 8), (8,)), False, (False, True, False), 1),
    ]
    members = []
    for trial, weight, arch in ((3, 2.0, archs[0]), (7, 1.0, archs[1])):
        net = build_network(arch)
        header = CheckpointHeader(arch=arch.to_dict(), norm=(-700.0, 300.0), input_size=32, metrics={}, trial=trial)
        members.append((header, net.state_dict(), weight))
    path = tmp_path_factory.mktemp("ens") / "ensemble.safetensors"
    return save_ensemble(
        path,
        members,
        selection=Selection(rule="greedy", metric="auc", val_score=0.5),
        study="t",
        data={},
        split={},
        data_fingerprint="x",
        search_patients=[],
        refit=False,
    )


@pytest.fixture(params=["UTC", "America/New_York", "Asia/Kolkata"])
def local_zone(request, monkeypatch) -> str:
    """The process's local time zone: Optuna 5 stores UTC and hands out local time."""
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()
