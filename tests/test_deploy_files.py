"""The deployment files (docker/Dockerfile, docker/compose.yaml, docker/k8s/*.yaml) agree with the
CLI and with each other.

They are validated here, not run: this project's machines have no Docker engine or cluster. Each
check is a function that lists problems; the real files must give none, and each check must find
the fault planted in a copy of them (``test_check_finds_fault``).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
IMAGE = "nasopt:latest"
SHARED = "/shared"  # where every nasopt container mounts the shared volume
REQUIRED_K8S = {"postgres.yaml", "secret.example.yaml", "artifacts-pvc.yaml", "workers.yaml", "dashboard.yaml"}


# --- the CLI -----------------------------------------------------------------------------------


def _nasopt_exe() -> str:
    beside = Path(sys.executable).with_name("nasopt")
    found = str(beside) if beside.exists() else shutil.which("nasopt")
    assert found, "no nasopt console script (pip install -e .)"
    return found


@functools.cache
def cli_help(path: tuple[str, ...]) -> tuple[frozenset[str], frozenset[str]]:
    """(subcommands, option flags) of ``nasopt *path --help``, read from Click's plain help."""
    env = {**os.environ, "TYPER_USE_RICH": "0", "COLUMNS": "200", "NO_COLOR": "1"}
    out = subprocess.run(
        [_nasopt_exe(), *path, "--help"], capture_output=True, text=True, env=env, check=True, timeout=120
    ).stdout
    commands: set[str] = set()
    flags: set[str] = set()
    section = ""
    for line in out.splitlines():
        if re.fullmatch(r"\w[\w ]*:", line):
            section = line[:-1]
        elif section == "Options" and re.match(r"  -", line):
            spec = re.split(r"\s{2,}", line.strip())[0]  # "-c, --config <path>", "--force / --no-force"
            flags.update(re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", spec))
        elif section == "Commands" and re.match(r"  \w", line):
            commands.add(line.split()[0])
    assert flags, f"no options found in `nasopt {' '.join(path)} --help`:\n{out}"
    return frozenset(commands), frozenset(flags)


def cli_problems(argv: list[str]) -> list[str]:
    """What is wrong in a ``nasopt ...`` command line: an unknown subcommand or option."""
    path: list[str] = []
    rest = list(argv[1:])
    while (commands := cli_help(tuple(path))[0]) and rest and not rest[0].startswith("-"):
        if rest[0] not in commands:
            return [f"`nasopt {' '.join(path)}` has no subcommand {rest[0]!r} ({', '.join(sorted(commands))})"]
        path.append(rest.pop(0))
    if commands and "--help" not in rest:
        return [f"`{shlex.join(argv)}` names no subcommand of `nasopt {' '.join(path)}`"]
    flags = cli_help(tuple(path))[1]
    problems = []
    for token in rest:
        if token == "--":
            break
        flag = token.split("=", 1)[0]
        if token.startswith("-") and not re.fullmatch(r"-[\d.]+", token) and flag not in flags:
            problems.append(f"`nasopt {' '.join(path)}` has no option {flag}")
    return problems


def nasopt_commands(argv: list[str]) -> list[list[str]]:
    """The ``nasopt`` command lines in a container command: itself, or those in an ``sh -c`` script."""
    if argv and Path(argv[0]).name in ("sh", "bash") and "-c" in argv[:-1]:
        lexer = shlex.shlex(argv[argv.index("-c") + 1], posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        found: list[list[str]] = []
        group: list[str] = []
        for token in [*lexer, ";"]:
            if set(token) <= set(";&|()"):
                starts = [i for i, word in enumerate(group) if Path(word).name == "nasopt"]
                found += [group[starts[0] :]] if starts else []
                group = []
            else:
                group.append(token)
        return found
    return [list(argv)] if argv and Path(argv[0]).name == "nasopt" else []


def option_values(cmd: list[str], flag: str) -> list[str]:
    """Every value given to ``flag`` (``--flag v`` or ``--flag=v``)."""
    values = [t.split("=", 1)[1] for t in cmd if t.startswith(flag + "=")]
    return values + [cmd[i + 1] for i, t in enumerate(cmd[:-1]) if t == flag]


def subcommand(cmd: list[str]) -> str:
    words = [w for w in cmd[1:3] if not w.startswith("-")]
    return " ".join(words[:2] if words[:1] == ["data"] else words[:1])


# --- the files, parsed -------------------------------------------------------------------------


@dataclass
class Deploy:
    """The parsed deployment files; checks read it, fault tests change a copy."""

    dockerfile: list[tuple[str, str]]  # (instruction, its text)
    compose: dict[str, Any]
    k8s: list[tuple[str, dict[str, Any]]]  # (file name, document)


@dataclass
class Launch:
    """A container's command line, with its mounts and the env names it sets."""

    where: str
    argv: list[str]
    mounts: dict[str, str]  # mount path -> volume
    env: dict[str, Any]


def read_dockerfile(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def load_deploy() -> Deploy:
    k8s = [(p.name, doc) for p in sorted((DOCKER / "k8s").glob("*.yaml")) for doc in yaml.safe_load_all(p.read_text())]
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return Deploy(read_dockerfile(DOCKER / "Dockerfile"), compose, [(f, d) for f, d in k8s if d is not None])


@functools.cache
def _deploy() -> Deploy:
    return load_deploy()


def exec_form(text: str) -> list[str]:
    """An ENTRYPOINT/CMD/RUN instruction's argv (shell form runs under sh -c)."""
    return json.loads(text) if text.lstrip().startswith("[") else ["sh", "-c", text]


def image_defaults(d: Deploy) -> tuple[list[str], list[str]]:
    """The image's ENTRYPOINT and CMD."""
    last = {ins: exec_form(text) for ins, text in d.dockerfile if ins in ("ENTRYPOINT", "CMD")}
    return last.get("ENTRYPOINT", []), last.get("CMD", [])


def as_argv(value: str | list[str] | None) -> list[str] | None:
    return shlex.split(value) if isinstance(value, str) else value


def pod_specs(d: Deploy) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, workload document, pod spec) of every workload."""
    for file, doc in d.k8s:
        spec = doc.get("spec") or {}
        if doc.get("kind") == "CronJob":
            spec = spec.get("jobTemplate", {}).get("spec", {})
        if doc.get("kind") == "Pod":
            yield f"{file}: Pod {doc['metadata']['name']}", doc, spec
        elif "template" in spec:
            yield f"{file}: {doc['kind']} {doc['metadata']['name']}", doc, spec["template"].get("spec", {})


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def compose_is_nasopt(service: dict[str, Any]) -> bool:
    return "build" in service or service.get("image") == IMAGE


def launches(d: Deploy) -> Iterator[Launch]:
    """Every command line the files start: the image's default, RUN steps, compose services, k8s containers."""
    entry, cmd = image_defaults(d)
    yield Launch("Dockerfile ENTRYPOINT + CMD", entry + cmd, {}, {})
    for ins, text in d.dockerfile:
        if ins == "RUN":
            yield Launch(f"Dockerfile RUN {text}", exec_form(text), {}, {})
    for name, svc in (d.compose.get("services") or {}).items():
        own = compose_is_nasopt(svc)
        argv = as_argv(svc.get("entrypoint")) or (entry if own else [])
        argv = argv + (as_argv(svc.get("command")) or (cmd if own and "entrypoint" not in svc else []))
        mounts = {}
        for v in svc.get("volumes", []):
            source, target = (v.get("source", ""), v["target"]) if isinstance(v, dict) else v.split(":")[:2]
            mounts[target] = source
        env = svc.get("environment") or {}
        env = dict(e.split("=", 1) for e in env) if isinstance(env, list) else env
        yield Launch(f"compose.yaml: service {name}", argv, mounts, env)
    for where, _, pod in pod_specs(d):
        for c in containers(pod):
            own = c.get("image") == IMAGE
            if "command" in c:  # Kubernetes: command replaces ENTRYPOINT and CMD, args replaces CMD
                argv = c["command"] + c.get("args", [])
            else:
                argv = (entry if own else []) + c.get("args", cmd if own else [])
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}
            yield Launch(f"{where} container {c['name']}", argv, mounts, env)


def docs_of(d: Deploy, kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in d.k8s if doc.get("kind") == kind]


def secrets(d: Deploy) -> dict[str, dict[str, str]]:
    return {s["metadata"]["name"]: {**s.get("data", {}), **s.get("stringData", {})} for s in docs_of(d, "Secret")}


# --- checks: each lists the problems it finds ---------------------------------------------------


def check_cli(d: Deploy) -> list[str]:
    """Every nasopt command line names a real subcommand and real options; argv entries are strings."""
    problems, seen = [], set()
    for launch in launches(d):
        if not all(isinstance(a, str) for a in launch.argv):
            problems.append(f"{launch.where}: not all strings (quote numbers): {launch.argv}")
            continue
        for cmd in nasopt_commands(launch.argv):
            seen.add(subcommand(cmd))
            problems += [f"{launch.where}: {p}" for p in cli_problems(cmd)]
    missing = {"worker", "dashboard", "data prepare"} - seen
    return problems + ([f"no container runs nasopt {', '.join(sorted(missing))}"] if missing else [])


def check_compose(d: Deploy) -> list[str]:
    """Build contexts and Dockerfiles exist; named volumes are defined; nasopt services use one image."""
    problems = []
    defined = set(d.compose.get("volumes") or {})
    for name, svc in d.compose["services"].items():
        build = svc.get("build")
        if build is not None:
            build = {"context": build} if isinstance(build, str) else build
            context = (DOCKER / build.get("context", ".")).resolve()
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            if not context.is_dir() or not dockerfile.is_file():
                problems.append(f"service {name}: no build context {context} or Dockerfile {dockerfile}")
        if compose_is_nasopt(svc) and (svc.get("image") != IMAGE or build is None):
            problems.append(f"service {name}: a nasopt service needs image {IMAGE} and the build of it")
        for v in svc.get("volumes", []):
            source = v.get("source", "") if isinstance(v, dict) else v.split(":")[0]
            if source and not source.startswith((".", "/", "~")) and source not in defined:
                problems.append(f"service {name}: volume {source!r} is not defined under volumes:")
    return problems


def check_secrets(d: Deploy) -> list[str]:
    """Every secretKeyRef and envFrom secretRef names a Secret (and key) of the example Secret."""
    have, problems = secrets(d), []
    for where, _, pod in pod_specs(d):
        for c in containers(pod):
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref and ref.get("key") not in have.get(ref.get("name"), {}):
                    problems.append(f"{where}: env {e['name']} reads missing secret {ref.get('name')}/{ref.get('key')}")
            for source in c.get("envFrom", []):
                if "secretRef" in source and source["secretRef"].get("name") not in have:
                    problems.append(f"{where}: envFrom names missing secret {source['secretRef'].get('name')}")
    return problems


def check_storage_url(d: Deploy) -> list[str]:
    """NASOPT_STORAGE (Secret; compose) reaches the database as its PostgreSQL is set up."""
    problems = []
    for name, values in secrets(d).items():
        if "NASOPT_STORAGE" not in values:
            continue
        url = make_url(values["NASOPT_STORAGE"])
        if url.drivername != "postgresql+psycopg" or url.password != values.get("POSTGRES_PASSWORD"):
            problems.append(f"secret {name}: NASOPT_STORAGE is not postgresql+psycopg with POSTGRES_PASSWORD")
        ports = {
            p.get("port")
            for s in docs_of(d, "Service")
            if s["metadata"]["name"] == url.host
            for p in s["spec"]["ports"]
        }
        if (url.port or 5432) not in ports:
            problems.append(f"secret {name}: no Service {url.host} on port {url.port or 5432}")
        for launch in launches(d):
            if launch.where.startswith("postgres.yaml") and "POSTGRES_USER" in launch.env:
                want = {"POSTGRES_USER": url.username, "POSTGRES_DB": url.database}
                got = {k: launch.env.get(k) for k in want}
                if got != want:
                    problems.append(f"{launch.where}: {got} but NASOPT_STORAGE names {want}")
    services = d.compose["services"]
    for launch in launches(d):
        if "NASOPT_STORAGE" in launch.env and launch.where.startswith("compose"):
            url = make_url(launch.env["NASOPT_STORAGE"])
            db = (services.get(url.host) or {}).get("environment") or {}
            if (db.get("POSTGRES_USER"), db.get("POSTGRES_DB")) != (url.username, url.database):
                problems.append(f"{launch.where}: NASOPT_STORAGE does not match service {url.host}'s database")
    return problems


def check_indexed_job(d: Deploy) -> list[str]:
    """The worker Job is Indexed, runs its pods at once, one GPU each, and lets SIGTERM requeue trials."""
    problems = []
    jobs = [
        (where, doc, pod)
        for where, doc, pod in pod_specs(d)
        if doc["kind"] == "Job" and any("--max-trials" in c.get("command", []) for c in containers(pod))
    ]
    if not jobs:
        return ["no worker Job (nasopt worker --max-trials) in docker/k8s"]
    for where, doc, pod in jobs:
        spec = doc["spec"]
        if spec.get("completionMode") != "Indexed":
            problems.append(f"{where}: completionMode is not Indexed")
        n = spec.get("parallelism")
        if not isinstance(n, int) or n < 1 or spec.get("completions") != n:
            problems.append(f"{where}: parallelism must be a count equal to completions")
        if pod.get("restartPolicy") not in ("Never", "OnFailure") or not isinstance(spec.get("backoffLimit"), int):
            problems.append(f"{where}: needs restartPolicy Never or OnFailure, and a backoffLimit")
        if (pod.get("terminationGracePeriodSeconds") or 0) < 10:
            problems.append(f"{where}: terminationGracePeriodSeconds leaves no time to requeue the trial")
        for c in pod["containers"]:
            cmd = c.get("command", [])
            if "--worker-index" in cmd:
                problems.append(f"{where}: a fixed --worker-index gives every pod one seed")
            gpus = (c.get("resources") or {}).get("limits", {}).get("nvidia.com/gpu")
            if "cuda" in option_values(cmd, "--device") and gpus != 1:
                problems.append(f"{where}: container {c['name']} runs on cuda without nvidia.com/gpu: 1")
    return problems


def check_volumes(d: Deploy) -> list[str]:
    """Mounts name pod volumes; claims name defined PVCs; nasopt pods mount a ReadWriteMany claim at /shared."""
    pvcs = {p["metadata"]["name"]: p for p in docs_of(d, "PersistentVolumeClaim")}
    problems = []
    for where, _, pod in pod_specs(d):
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for v in volumes.values():
            claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
            if claim is not None and claim not in pvcs:
                problems.append(f"{where}: volume {v['name']} claims undefined PVC {claim}")
        for c in containers(pod):
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            problems += [
                f"{where}: {c['name']} mounts undefined volume {n}" for n in mounts.values() if n not in volumes
            ]
            if c.get("image") != IMAGE:
                continue
            claim = (volumes.get(mounts.get(SHARED, "")) or {}).get("persistentVolumeClaim", {}).get("claimName")
            if "ReadWriteMany" not in pvcs.get(claim, {}).get("spec", {}).get("accessModes", []):
                problems.append(f"{where}: {c['name']} does not mount a ReadWriteMany claim at {SHARED}")
    return problems


def check_shared_paths(d: Deploy) -> list[str]:
    """Artifacts and data cache lie on the shared mount; one study's creators all pass the same options."""
    problems = []
    options: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {}
    for launch in launches(d):
        if launch.where.startswith("Dockerfile"):
            continue
        for cmd in nasopt_commands(launch.argv):
            if SHARED not in launch.mounts:
                problems.append(f"{launch.where}: runs nasopt without the shared volume at {SHARED}")
            caches = [
                v.split("=", 1)[1].strip("\"'") for v in option_values(cmd, "--set") if v.startswith("data.cache_dir=")
            ]
            for path in option_values(cmd, "--artifacts") + caches:
                if not path.startswith(SHARED + "/"):
                    problems.append(f"{launch.where}: {path} is not on the shared volume {SHARED}")
            if subcommand(cmd) in ("worker", "search"):
                study = (option_values(cmd, "--study") or ["nasopt"])[0]
                mine = {f: tuple(option_values(cmd, f)) for f in ("--config", "--set", "--artifacts")}
                deployment = "compose" if launch.where.startswith("compose") else "k8s"
                first = options.setdefault((deployment, study), mine)
                if mine != first:
                    problems.append(f"{launch.where}: study {study} is created elsewhere with {first}, here {mine}")
    for launch in launches(d):
        deployment = "compose" if launch.where.startswith("compose") else "k8s"
        for cmd in nasopt_commands(launch.argv):
            for study in option_values(cmd, "--study") if subcommand(cmd) == "dashboard" else []:
                if (deployment, study) not in options:
                    problems.append(f"{launch.where}: no worker creates study {study}")
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(t for i, t in d.dockerfile if i == "ENV")))
    if not env.get("NASOPT_ARTIFACTS", "").startswith(SHARED + "/"):
        problems.append(f"Dockerfile: NASOPT_ARTIFACTS is not on the shared volume {SHARED}")
    return problems


def check_services(d: Deploy) -> list[str]:
    """Every Service selects the pods of some workload."""
    labels = [(doc["spec"]["template"].get("metadata") or {}).get("labels", {}) for _, doc, _ in pod_specs(d)]
    problems = []
    for s in docs_of(d, "Service"):
        selector = s["spec"].get("selector") or {}
        if not any(selector.items() <= have.items() for have in labels):
            problems.append(f"Service {s['metadata']['name']}: selector {selector} matches no pod template")
    return problems


def check_images(d: Deploy) -> list[str]:
    """Containers running nasopt use the image built here, and do not pull its :latest from a registry."""
    problems = []
    for where, _, pod in pod_specs(d):
        for c in containers(pod):
            runs = nasopt_commands(c.get("command", []) + c.get("args", []))
            if runs and c.get("image") != IMAGE:
                problems.append(f"{where}: {c['name']} runs nasopt from image {c.get('image')}, not {IMAGE}")
            if c.get("image") == IMAGE and c.get("imagePullPolicy") not in ("IfNotPresent", "Never"):
                problems.append(f"{where}: {c['name']} would pull {IMAGE} (imagePullPolicy: IfNotPresent)")
    if image_defaults(d)[0] != ["nasopt"]:
        problems.append('Dockerfile: ENTRYPOINT is not ["nasopt"]')
    return problems


CHECKS: list[Callable[[Deploy], list[str]]] = [
    check_cli, check_compose, check_secrets, check_storage_url, check_indexed_job, check_volumes,
    check_shared_paths, check_services, check_images,
]  # fmt: skip


# --- tests --------------------------------------------------------------------------------------


def test_files_parse() -> None:
    """Every YAML file under docker/ parses; Kubernetes documents have apiVersion, kind and name."""
    files = sorted(DOCKER.rglob("*.y*ml"))
    assert REQUIRED_K8S <= {p.name for p in files}
    for path in files:
        docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
        assert docs, path
        if path.parent.name == "k8s":
            for doc in docs:
                assert {"apiVersion", "kind"} <= doc.keys() and doc["metadata"]["name"], (path, doc)
    assert "change" in (DOCKER / "k8s" / "secret.example.yaml").read_text().lower()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_deploy_files_pass(check: Callable[[Deploy], list[str]]) -> None:
    assert check(_deploy()) == []


def test_cli_problems() -> None:
    """The CLI check tells made-up subcommands and options from real ones."""
    assert cli_problems(["nasopt", "worker", "--study", "s", "--set", "data.cache_dir=/x", "--n-trials=0"]) == []
    assert cli_problems(["nasopt", "data", "prepare", "-c", "f.toml", "--force", "--no-force"]) == []
    assert cli_problems(["nasopt", "worker", "--help"]) == []
    assert cli_problems(["nasopt", "worker", "--study", "s", "--bogus-flag", "1"]) == [
        "`nasopt worker` has no option --bogus-flag"
    ]
    assert cli_problems(["nasopt", "dashboard", "--artifact-dir=/x"]) == [
        "`nasopt dashboard` has no option --artifact-dir"
    ]
    assert "no subcommand 'wroker'" in cli_problems(["nasopt", "wroker"])[0]
    assert "names no subcommand" in cli_problems(["nasopt", "data", "--config", "f"])[0]


def test_nasopt_commands() -> None:
    script = "nasopt data prepare --force && exec nasopt worker --study s; echo done | tee log"
    assert nasopt_commands(["sh", "-c", script]) == [
        ["nasopt", "data", "prepare", "--force"],
        ["nasopt", "worker", "--study", "s"],
    ]
    assert nasopt_commands(["/usr/local/bin/nasopt", "front"]) == [["/usr/local/bin/nasopt", "front"]]
    assert nasopt_commands(["postgres"]) == []


def _k8s(d: Deploy, kind: str, name: str) -> dict[str, Any]:
    return next(doc for _, doc in d.k8s if doc["kind"] == kind and doc["metadata"]["name"] == name)


def _worker(d: Deploy) -> dict[str, Any]:
    return _k8s(d, "Job", "nasopt-workers")["spec"]["template"]["spec"]["containers"][0]


def _set_run(d: Deploy, old: str, new: str) -> None:
    d.compose["services"]["worker"]["command"] = [
        new if a == old else a for a in d.compose["services"]["worker"]["command"]
    ]


def _set_dashboard_study(d: Deploy, study: str) -> None:
    command = _k8s(d, "Deployment", "nasopt-dashboard")["spec"]["template"]["spec"]["containers"][0]["command"]
    command[command.index("--study") + 1] = study


FAULTS: dict[str, tuple[Callable[[Deploy], list[str]], Callable[[Deploy], None]]] = {
    "bogus flag": (check_cli, lambda d: _worker(d)["command"].append("--bogus")),
    "bogus subcommand": (check_cli, lambda d: _set_run(d, "worker", "wroker")),
    "unquoted number": (check_cli, lambda d: _worker(d)["command"].__setitem__(-1, 4)),
    "bogus RUN": (check_cli, lambda d: d.dockerfile.append(("RUN", "nasopt data prepare --nope"))),
    "bogus CMD": (check_cli, lambda d: d.dockerfile.append(("CMD", '["worker", "--gpus", "2"]'))),
    "no build context": (check_compose, lambda d: d.compose["x-nasopt"]["build"].update(context="../nowhere")),
    "undefined volume": (check_compose, lambda d: d.compose["services"]["db"]["volumes"].append("ghost:/x")),
    "missing secret key": (
        check_secrets,
        lambda d: _worker(d)["env"][0]["valueFrom"]["secretKeyRef"].update(key="NASOPT_URL"),
    ),
    "password mismatch": (
        check_storage_url,
        lambda d: _k8s(d, "Secret", "nasopt-db")["stringData"].update(POSTGRES_PASSWORD="x"),
    ),
    "wrong db host": (
        check_storage_url,
        lambda d: d.compose["x-nasopt"]["environment"].update(NASOPT_STORAGE="postgresql+psycopg://nasopt@pg/nasopt"),
    ),
    "not indexed": (check_indexed_job, lambda d: _k8s(d, "Job", "nasopt-workers")["spec"].pop("completionMode")),
    "no parallelism": (check_indexed_job, lambda d: _k8s(d, "Job", "nasopt-workers")["spec"].pop("parallelism")),
    "no GPU": (check_indexed_job, lambda d: _worker(d)["resources"]["limits"].pop("nvidia.com/gpu")),
    "undefined mount": (check_volumes, lambda d: _worker(d)["volumeMounts"][0].update(name="shard")),
    "undefined claim": (
        check_volumes,
        lambda d: _k8s(d, "Deployment", "nasopt-dashboard")["spec"]["template"]["spec"]["volumes"][0][
            "persistentVolumeClaim"
        ].update(claimName="nasopt-artifacts"),
    ),
    "artifacts off the volume": (check_shared_paths, lambda d: _set_run(d, "/shared/artifacts", "/data/artifacts")),
    "study options differ": (check_shared_paths, lambda d: _worker(d)["command"].extend(["--set", "data.seed=1"])),
    "dangling Service": (
        check_services,
        lambda d: _k8s(d, "Service", "nasopt-postgres")["spec"].update(selector={"app": "pg"}),
    ),
    "other image": (check_images, lambda d: _worker(d).update(image="nasopt:old")),
    "pulls latest": (check_images, lambda d: _worker(d).pop("imagePullPolicy")),
    "db user mismatch": (
        check_storage_url,
        lambda d: _k8s(d, "StatefulSet", "nasopt-postgres")["spec"]["template"]["spec"]["containers"][0]["env"][
            0
        ].update(value="postgres"),
    ),
    "missing envFrom secret": (check_secrets, lambda d: _worker(d).update(envFrom=[{"secretRef": {"name": "nasopt"}}])),
    "no grace period": (
        check_indexed_job,
        lambda d: _k8s(d, "Job", "nasopt-workers")["spec"]["template"]["spec"].pop("terminationGracePeriodSeconds"),
    ),
    "fixed worker index": (check_indexed_job, lambda d: _worker(d)["command"].extend(["--worker-index", "0"])),
    "claim not RWX": (
        check_volumes,
        lambda d: _k8s(d, "PersistentVolumeClaim", "nasopt-shared")["spec"].update(accessModes=["ReadWriteOnce"]),
    ),
    "compose without shared": (check_shared_paths, lambda d: d.compose["services"]["dashboard"].update(volumes=[])),
    "dashboard's study": (check_shared_paths, lambda d: _set_dashboard_study(d, "nasl")),
    "image artifacts": (check_shared_paths, lambda d: d.dockerfile.append(("ENV", "NASOPT_ARTIFACTS=/data/artifacts"))),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_check_finds_fault(fault: str) -> None:
    """Each check fails on a copy of the files with one fault planted."""
    check, plant = FAULTS[fault]
    d = copy.deepcopy(_deploy())
    plant(d)
    assert check(d), f"{check.__name__} missed: {fault}"
