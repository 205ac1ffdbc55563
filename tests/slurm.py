"""A throwaway single-node Slurm (munged, slurmctld, slurmd) for tests, entirely under a temporary folder.

``running_slurm()`` starts the three daemons in the foreground as children of the test process, waits (by
polling) until the node is idle, and on exit cancels every job, then stops each daemon by its process id.
Nothing under /etc, /var or /run is read or written; client commands find the cluster through ``SLURM_CONF``
in ``Slurm.env``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

POLL_S = 0.2


DAEMONS = ("slurmctld", "slurmd", "munged", "mungekey")


def _program(name: str) -> str | None:
    """A program on PATH, else in /usr/sbin or /sbin, where Debian puts the daemons (often off a user's PATH)."""
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def require_slurm() -> dict[str, str]:
    """The daemons' paths. Skip when Slurm is not installed, except under CI (whose .ci/run installs it),
    where that is a failure."""
    found = {name: _program(name) for name in (*DAEMONS, "sbatch", "squeue", "sinfo", "scontrol", "scancel")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        message = (
            f"Slurm not installed ({', '.join(missing)} missing; "
            "Debian: apt-get install slurmctld slurmd slurm-client munge)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return {name: path for name, path in found.items() if path and name in DAEMONS}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hardware(slurmd: str) -> str:
    """The node's CPU layout as slurmd itself detects it: a node configured with more than that is drained."""
    out = subprocess.run([slurmd, "-C"], capture_output=True, text=True, check=True, timeout=60).stdout
    words = out.split()
    keys = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
    return " ".join(w for w in words if w.split("=")[0] in keys)


def _slurm_conf(root: Path, node: str, socket_path: Path, hardware: str) -> str:
    return f"""\
ClusterName=nasopt-test
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
# The only way Slurm finds a munged socket other than /run/munge's.
AuthInfo=socket={socket_path}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
PlugStackConfig={root}/plugstack.conf
# cgroup tracking fails in containers ("cgroup namespace 'freezer' not mounted").
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# Per-core allocation: otherwise every job takes the whole node and array tasks run one at a time.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# Finished jobs stay visible to `scontrol show job` (no accounting database here) for the test's lifetime.
MinJobAge=86400
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SlurmctldDebug=info
SlurmdDebug=info
NodeName={node} NodeAddr=127.0.0.1 {hardware} State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class Slurm:
    """A running cluster: ``env`` points Slurm's client commands at it."""

    root: Path
    node: str
    env: dict[str, str]
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60, check=False)
        if check and proc.returncode:
            pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}\n{self.logs()}")
        return proc

    def sbatch(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
        """Submit a batch job (``args``: options, script, script arguments); its job id."""
        proc = subprocess.run(
            ["sbatch", "--parsable", *args],
            cwd=cwd,
            env=dict(self.env, **(env or {})),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode:
            pytest.fail(f"sbatch failed ({proc.returncode}): {proc.stdout}{proc.stderr}\n{self.logs()}")
        return proc.stdout.strip().split(";")[0]  # "JOBID[;CLUSTER]"

    def wait(self, job_id: str, deadline_s: float = 600) -> dict[str, tuple[str, str]]:
        """Poll until no task of the job is queued or running; each task's (JobState, ExitCode)."""
        end = time.monotonic() + deadline_s
        while self.run("squeue", "-h", "-j", job_id, check=False).stdout.strip():
            self.check_alive()
            if time.monotonic() > end:
                pytest.fail(f"job {job_id} still queued or running after {deadline_s:.0f} s\n{self.logs()}")
            time.sleep(POLL_S)
        return self.job_states(job_id)

    def job_states(self, job_id: str) -> dict[str, tuple[str, str]]:
        """Each task of a job (the array index, or the job id) mapped to its (JobState, ExitCode)."""
        states = {}
        for line in self.run("scontrol", "-o", "show", "job", job_id).stdout.splitlines():
            fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
            task = fields.get("ArrayTaskId", fields["JobId"])
            states[task] = (fields["JobState"], fields["ExitCode"])
        return states

    def check_alive(self) -> None:
        dead = {name: p.returncode for name, p in self.daemons.items() if p.poll() is not None}
        if dead:
            pytest.fail(f"Slurm daemons exited: {dead}\n{self.logs()}")

    def logs(self) -> str:
        """The daemons' logs, for failure messages (they hold harmless "error:" lines about PMIx and hwloc)."""
        parts = []
        for name in ("munged", "slurmctld", "slurmd"):
            # A daemon's own log file, else its output (errors from before it opened the log file).
            for path in (self.root / f"{name}.log", self.root / f"{name}.out"):
                if path.is_file() and path.stat().st_size:
                    parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-6000:]}")
                    break
        return "\n".join(parts)


def _our_processes(conf: Path) -> list[int]:
    """Processes whose environment names this cluster's slurm.conf: job steps (slurmstepd and what the jobs
    started), which outlive slurmd, and nothing of any other cluster or user."""
    marker = f"SLURM_CONF={conf}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return pids


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@contextmanager
def running_slurm(start_deadline_s: float = 60) -> Iterator[Slurm]:
    """Start munged, slurmctld and slurmd under a fresh temporary folder; stop them and delete it on exit."""
    bins = require_slurm()
    # Directly under /tmp, not pytest's deep tmp_path: slurmd puts Unix sockets (108-byte path limit) in its
    # spool folder. 0755 because munged refuses a socket folder that others cannot search.
    root = Path(tempfile.mkdtemp(prefix="nasopt-slurm-"))
    root.chmod(0o755)
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, root, ignore_errors=True)  # runs last: after the daemons stopped
        node = socket.gethostname().split(".")[0]
        munge_dir = root / "munge"
        munge_dir.mkdir(mode=0o755)
        socket_path = munge_dir / "munge.socket"
        for sub in ("state", "spool"):
            (root / sub).mkdir()
        conf = root / "slurm.conf"
        (root / "plugstack.conf").write_text("")  # not /etc/slurm's
        conf.write_text(_slurm_conf(root, node, socket_path, _hardware(bins["slurmd"])))
        env = dict(os.environ, SLURM_CONF=str(conf))
        for var in [v for v in env if v.startswith(("SLURM_", "SBATCH_", "SQUEUE_")) and v != "SLURM_CONF"]:
            del env[var]  # a test run inside a Slurm job must not talk to (or as) that outer job
        cluster = Slurm(root, node, env)

        def start(name: str, *cmd: str) -> None:
            out = (root / f"{name}.out").open("w")
            cluster.daemons[name] = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
            out.close()

        def stop_all() -> None:
            # Cancel the jobs first: slurmstepd outlives slurmd and would keep running the jobs.
            if "slurmctld" in cluster.daemons and cluster.daemons["slurmctld"].poll() is None:
                jobs = cluster.run("squeue", "-h", "-o", "%A", check=False).stdout.split()
                if jobs:
                    cluster.run("scancel", *jobs, check=False)
                end = time.monotonic() + 60
                while cluster.run("squeue", "-h", check=False).stdout.strip() and time.monotonic() < end:
                    time.sleep(POLL_S)
            for name in ("slurmd", "slurmctld", "munged"):
                if name in cluster.daemons:
                    _stop(cluster.daemons[name])
            for pid in _our_processes(conf):  # whatever a cancel left behind, by process id
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

        stack.callback(stop_all)
        key = munge_dir / "munge.key"
        subprocess.run([bins["mungekey"], "-c", "-k", str(key)], capture_output=True, check=True, timeout=60)
        start(
            "munged",
            bins["munged"],
            "--foreground",
            f"--socket={socket_path}",
            f"--key-file={key}",
            f"--pid-file={munge_dir / 'munged.pid'}",
            f"--log-file={root / 'munged.log'}",
            f"--seed-file={munge_dir / 'munged.seed'}",
        )
        end = time.monotonic() + start_deadline_s
        while not socket_path.exists():
            cluster.check_alive()
            if time.monotonic() > end:
                pytest.fail(f"munged did not create its socket in {start_deadline_s:.0f} s\n{cluster.logs()}")
            time.sleep(0.05)
        start("slurmctld", bins["slurmctld"], "-D", "-f", str(conf))
        start("slurmd", bins["slurmd"], "-D", "-N", node, "-f", str(conf))
        while cluster.run("sinfo", "-h", "-n", node, "-o", "%T", check=False).stdout.strip() != "idle":
            cluster.check_alive()
            if time.monotonic() > end:
                pytest.fail(f"node {node} not idle after {start_deadline_s:.0f} s\n{cluster.logs()}")
            time.sleep(POLL_S)
        yield cluster
