"""The ``nasopt`` command line.

User errors (bad study file, unknown sampler, unreachable storage, missing data) end as one line
on stderr and exit status 2; no traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from nasopt.config.schema import SAMPLERS, load_config
from nasopt.data.sources import SOURCES
from nasopt.errors import NasoptError

if TYPE_CHECKING:
    import optuna

    from nasopt.search.worker import WorkerOptions

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Architecture search for 3D lung-nodule classifiers."
)
data_app = typer.Typer(no_args_is_help=True, help="Prepare data sets into NoduleSet caches.")
app.add_typer(data_app, name="data")
config_app = typer.Typer(no_args_is_help=True, help="Study files: the effective configuration, what each key means.")
app.add_typer(config_app, name="config")


def _console(stderr: bool = False) -> Console:
    """A console whose printed lines never wrap, whatever the terminal, ``COLUMNS`` or path length:
    people grep result lines and scripts parse them. Tables still fit the width (200 columns
    without a terminal, where rich would otherwise take 80)."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or "COLUMNS" in os.environ else 200
    return Console(stderr=stderr, width=width, soft_wrap=True)


console = _console()

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Study file (TOML); defaults if absent.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a study-file value: section.key=value.")]
StorageOpt = Annotated[
    str | None, typer.Option(help="Study storage URL (else $NASOPT_STORAGE, else sqlite:///storage/nasopt.db).")
]
DeviceNameOpt = Annotated[
    str | None, typer.Option(help="Only the trials that ran on this device: latencies compare within one.")
]


def _with_source_inputs(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` one option per data source that reads an input (--dicom-root DIR, ...),
    named and described by the source table; the command receives them in ``**inputs``."""
    signature = inspect.signature(command, eval_str=True)
    params = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    keyword = inspect.Parameter.KEYWORD_ONLY
    for name, source in SOURCES.items():
        if (given := source.input) is not None:
            option = typer.Option(given.flag, metavar=given.metavar, help=f"{name}: {given.help}.")
            annotation = Annotated[Path | None, option]
            params.append(inspect.Parameter(given.key, keyword, default=None, annotation=annotation))
            command.__annotations__[given.key] = annotation  # Typer reads the type hints too
    command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return command


@data_app.command("prepare")
@_with_source_inputs
def data_prepare(
    source: Annotated[
        str | None,
        typer.Option(
            help=f"{', '.join(SOURCES)} (else the study file's, else phantom); the phantom is embedded, the others "
            "read the input named below."
        ),
    ] = None,
    config: ConfigOpt = None,
    max_scans: Annotated[int | None, typer.Option(help="Phantom: use only the first N scans.")] = None,
    seed: Annotated[int | None, typer.Option(help="Phantom: texture and noise seed.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Processes preparing scans in parallel.")] = 1,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Skip unreadable inputs and list them in a report next to the cache.")
    ] = False,
    force: Annotated[bool, typer.Option(help="Prepare again even when the cache exists.")] = False,
    set_: SetOpt = None,
    **inputs: Path | None,
) -> None:
    """Prepare a data source into a cached NoduleSet (reused while its settings and input are unchanged)."""
    import json

    from nasopt.data.prepare import prepare, skip_report_path

    # json.dumps gives a valid TOML string for any text (quotes, backslashes in paths).
    overrides = list(set_ or []) + ([f"data.source={json.dumps(source)}"] if source else [])
    named = {key: str(path) for key, path in inputs.items() if path is not None}
    given = {**named, "max_scans": max_scans, "seed": seed}
    overrides += [f"data.{key}={json.dumps(value)}" for key, value in given.items() if value is not None]
    cfg = load_config(config, overrides)
    t0 = time.perf_counter()
    ns, path = prepare(cfg.data, workers=workers, progress=True, force=force, skip_bad=skip_bad)
    if cfg.data.source == "phantom":
        from nasopt.data.sources import PHANTOM_CAVEAT

        note = f" [dim]({PHANTOM_CAVEAT})[/dim]"
    else:
        note = "" if ns.folds is None else f", predefined folds {sorted(set(ns.folds.tolist()))}"
    n_mal = int(ns.labels.sum())
    console.print(
        f"{path}: {len(ns)} nodules ({len(ns) - n_mal} benign, {n_mal} malignant) from "
        f"{len(set(ns.patients))} patients in {time.perf_counter() - t0:.1f} s{note}"
    )
    if skip_bad and skip_report_path(path).is_file():
        console.print(f"skipped items are listed in {skip_report_path(path)}")


@config_app.command("show")
def config_show(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the Markdown table of every key (docs/study-files.md's) instead.")
    ] = False,
) -> None:
    """Print the effective configuration as a study file, every key under its description.

    The values are the defaults, overridden by the study file, then by each --set.
    """
    from nasopt.config.docs import key_table, to_toml

    cfg = load_config(config, list(set_ or []))
    origin = " < ".join(["defaults", *([str(config)] if config else []), *(f"--set {o}" for o in set_ or [])])
    sys.stdout.write(key_table(cfg) if markdown else to_toml(cfg, origin))


ArtifactsOpt = Annotated[
    str | None,
    typer.Option(
        envvar="NASOPT_ARTIFACTS",
        help="Where a new study's artifacts go: a folder every host mounts, or s3://BUCKET (recorded on the study; "
        "default: beside a SQLite or journal file, else ./storage/artifacts).",
    ),
]
NTrialsOpt = Annotated[int | None, typer.Option(help="Trials this process runs.")]
MaxTrialsOpt = Annotated[
    int | None, typer.Option(help="Complete trials in the whole study, all workers: never exceeded.")
]
TimeoutOpt = Annotated[float | None, typer.Option(help="Seconds this process runs (no trial starts after).")]
SamplerOpt = Annotated[str | None, typer.Option(help="nsga2, nsga3, tpe or random (else the study file's).")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
SeedOpt = Annotated[int | None, typer.Option(help="Sampler seed (else the study file's); plus the worker index.")]
ThreadsOpt = Annotated[int | None, typer.Option(help="CPU threads for this process.")]
IndexOpt = Annotated[
    int | None,
    typer.Option(
        help="This worker's number, added to the sampler seed (else $SLURM_ARRAY_TASK_ID, else "
        "$JOB_COMPLETION_INDEX, else a random seed)."
    ),
]
HeartbeatOpt = Annotated[
    float,
    typer.Option(
        min=1, help="Seconds between a running trial's heartbeats; a trial 3 beats late is failed and retried."
    ),
]


def _worker_options(
    study: Annotated[str, typer.Option(help="Study name (created, or joined when it exists).")] = "nasopt",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    storage: StorageOpt = None,
    artifacts: ArtifactsOpt = None,
    device: DeviceOpt = "auto",
    max_trials: MaxTrialsOpt = None,
    n_trials: NTrialsOpt = None,
    timeout: TimeoutOpt = None,
    heartbeat: HeartbeatOpt = 60.0,
    worker_index: IndexOpt = None,
    sampler: SamplerOpt = None,
    seed: SeedOpt = None,
    threads: ThreadsOpt = None,
) -> WorkerOptions:
    """The options of one search worker, as ``worker``, ``search`` and ``launch`` all take them."""
    from nasopt.search.worker import Budget, WorkerOptions

    if sampler is not None and sampler not in SAMPLERS:
        raise NasoptError(f"--sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    budget = Budget(n_trials, max_trials, timeout)
    return WorkerOptions(study, config, tuple(set_ or ()), storage, artifacts, budget, sampler, device, seed, threads,
                         worker_index, heartbeat)  # fmt: skip


def _with_worker_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` the worker options of :func:`_worker_options`; it receives them as one
    typed ``opts`` (a ``WorkerOptions``) in place of its ``opts`` parameter."""

    def params(fn: Callable[..., object]) -> list[inspect.Parameter]:
        # Annotations are strings here; evaluated one by one, as Typer needs them, leaving out
        # ``opts``, whose WorkerOptions is imported only when a worker runs (it imports torch).
        found = inspect.signature(fn).parameters.values()
        return [p.replace(annotation=eval(p.annotation, fn.__globals__)) for p in found if p.name != "opts"]

    own, shared = params(command), params(_worker_options)

    @functools.wraps(command)
    def run(**kwargs: object) -> None:
        given = {p.name: kwargs.pop(p.name) for p in shared}
        command(_worker_options(**given), **kwargs)

    run.__signature__ = inspect.Signature(shared + own)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in shared + own}  # Typer reads the type hints too
    return run


def _run_worker(opts: WorkerOptions) -> optuna.Study:
    """The worker loop behind `worker` and `search`; returns the study."""
    cfg = load_config(opts.config, list(opts.overrides))  # before the heavy imports: bad input fails fast
    from nasopt.search.worker import Stopped, run_search, worker_index

    try:
        return run_search(cfg, dataclasses.replace(opts, index=worker_index(opts.index)), console)
    except Stopped:
        console.print("stopped by SIGTERM; the study resumes when a worker runs again")
        raise typer.Exit(143) from None


@app.command()
@_with_worker_options
def worker(opts: WorkerOptions) -> None:
    """One search worker: join (or create) a study and train trials until its budget is spent.

    Run any number, on any hosts, against one --storage. SIGTERM fails the running trial with
    reason "stopped", queues it again and exits with status 143.
    """
    _run_worker(opts)


@app.command()
@_with_worker_options
def search(
    opts: WorkerOptions, front: Annotated[bool, typer.Option(help="Print the Pareto front at the end.")] = True
) -> None:
    """Run (or resume) a search in this process and print its Pareto front (`worker`, then `front`)."""
    from nasopt.visualization.report import pareto_table

    result = _run_worker(opts)
    if front:
        console.print(pareto_table(result))


@app.command()
def enqueue(
    study: Annotated[str, typer.Option(help="Study name (created from --config when it does not exist).")] = "nasopt",
    file: Annotated[
        Path | None, typer.Option("--file", help="[[network]] tables, e.g. studies/known-networks.toml.")
    ] = None,
    from_study: Annotated[
        str | None, typer.Option(help="Another study in the same storage: its complete trials' networks.")
    ] = None,
    front: Annotated[bool, typer.Option(help="With --from-study: its Pareto front only.")] = False,
    from_table: Annotated[
        Path | None,
        typer.Option(help="A tabular benchmark, e.g. benchmarks/nasbench/naslung-phantom.json.gz: its front."),
    ] = None,
    top: Annotated[int | None, typer.Option(min=1, help="With --from-table: its N most accurate rows instead.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    storage: StorageOpt = None,
) -> None:
    """Queue known networks in a study (Optuna's enqueue_trial): workers train them first.

    A network the study's [space] cannot hold is refused in one line naming its slot, and then
    nothing is queued. A network already queued or run is not queued again.
    """
    if sum(x is not None for x in (file, from_study, from_table)) != 1:
        raise NasoptError("enqueue: give exactly one of --file FILE, --from-study NAME or --from-table FILE")
    cfg = load_config(config, list(set_ or []))
    import optuna

    from nasopt.search.warmstart import enqueue as put
    from nasopt.search.warmstart import from_study as networks_of
    from nasopt.search.warmstart import from_table as table_rows
    from nasopt.search.warmstart import read_networks
    from nasopt.storages.study import create_or_load, load_study
    from nasopt.storages.url import open_storage

    # Every network is checked before the study is touched.
    if file is not None:
        networks = read_networks(file, cfg.space)
    elif from_table is not None:
        networks = table_rows(from_table, cfg.space, top)
    else:
        networks = networks_of(load_study(from_study, open_storage(storage, heartbeat=None, create=False))[0],
                               cfg.space, front)  # fmt: skip
    opened = create_or_load(study, cfg, open_storage(storage), optuna.samplers.RandomSampler(), storage)
    added = put(opened, networks)
    kept = len(networks) - added
    console.print(f"study {study!r}: queued {added} of {len(networks)} networks ({kept} already queued or run)")


@app.command("storage-proxy")
def storage_proxy(
    storage: StorageOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 serves other machines.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 13000,
) -> None:
    """Serve a study database to workers through Optuna's gRPC storage proxy (--storage grpc://HOST:PORT).

    Workers then need no database driver or credentials, and the proxy caches what they read.
    """
    from optuna.storages import get_storage, run_grpc_proxy_server

    from nasopt.storages.url import open_storage, redact, storage_url

    # Optuna's cache in front of the database: without it every trial list a worker asks for is
    # a full reload (measured: 10 s a trial at 1 000 trials, against 0.9 s with it).
    backend = get_storage(open_storage(storage, heartbeat=None))
    console.print(f"storage proxy on {host}:{port} for {redact(storage_url(storage))} (Ctrl-C stops it)")
    run_grpc_proxy_server(backend, host=host, port=port)


@app.command()
@_with_worker_options
def launch(
    opts: WorkerOptions, workers: Annotated[int, typer.Option(min=1, help="Worker processes on this machine.")] = 2
) -> None:
    """Run several workers on this machine against one study, each with these options.

    Example: nasopt launch --workers 2 --study demo --config studies/demo.toml --max-trials 12
    """
    import torch

    from nasopt.cli.launch import launch as run

    code = run(workers, opts, gpus=torch.cuda.device_count())
    if code:
        sys.exit(code)
    front(opts.study, opts.storage)


@app.command()
def dashboard(
    storage: StorageOpt = None,
    study: Annotated[
        str | None, typer.Option(help="Serve this study's artifacts (needed when studies keep them apart).")
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 serves other machines, unauthenticated.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
) -> None:
    """Serve optuna-dashboard on the study storage, with the trials' artifacts."""
    from optuna_dashboard import run_server

    from nasopt.artifacts.store import dashboard_artifacts
    from nasopt.storages.url import open_storage, redact, storage_url

    store = open_storage(storage, heartbeat=None, create=False)
    artifacts = dashboard_artifacts(store, storage_url(storage), study)
    if host not in ("127.0.0.1", "localhost", "::1"):
        _console(stderr=True).print(
            f"warning: optuna-dashboard has no authentication; anyone who can reach {host}:{port} can read and "
            "edit this study",
            highlight=False,
        )
    console.print(f"optuna-dashboard on http://{host}:{port}/ for {redact(storage_url(storage))} (Ctrl-C stops it)")
    run_server(store, host=host, port=port, artifact_store=artifacts)


@app.command()
def front(
    study: Annotated[str, typer.Option(help="Study name.")] = "nasopt",
    storage: StorageOpt = None,
    device_name: DeviceNameOpt = None,
) -> None:
    """Print the Pareto front of a study's feasible trials."""
    from nasopt.storages.study import load_study
    from nasopt.storages.url import open_storage
    from nasopt.visualization.report import pareto_table

    opened = load_study(study, open_storage(storage, heartbeat=None, create=False))[0]
    console.print(pareto_table(opened, device_name))


@app.command()
def retrain(
    study: Annotated[str, typer.Option(help="Study name.")] = "nasopt",
    trial: Annotated[int, typer.Option(help="The complete trial to rebuild from its record.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Write the retrained network here (safetensors).")] = None,
    storage: StorageOpt = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N (exact reproduction: cpu).")] = "cpu",
) -> None:
    """Train a trial again from its record and compare its validation predictions with the stored ones."""
    from nasopt.search.retrain import retrain as run
    from nasopt.storages.study import load_study
    from nasopt.storages.url import open_storage
    from nasopt.training.fit import resolve_device

    opened, cfg = load_study(study, open_storage(storage, heartbeat=None, create=False))
    r = run(opened, cfg, trial, storage, resolve_device(device), out)
    console.print(
        f"trial {r.trial} retrained in {r.seconds:.1f} s on {r.device}: largest difference from its stored "
        f"validation predictions {r.max_difference:.3g} over {r.nodules} nodules"
        + (" (reproduced exactly)" if r.reproduced else "")
    )
    if not r.recorded:
        console.print("note: this trial predates provenance records; nothing to compare it with")
    for found in r.differences:
        console.print(f"differs: {escape(found)}", highlight=False)
    if r.out is not None:
        console.print(f"wrote {r.out}")
    if not r.reproduced and not r.differences and r.recorded:
        raise typer.Exit(1)  # same code, libraries, device and data, other predictions: not reproducible


@app.command()
def export(
    study: Annotated[str, typer.Option(help="Study name.")] = "nasopt",
    out: Annotated[Path, typer.Option(help="Ensemble file to write (safetensors).")] = Path(
        "storage/ensemble.safetensors"
    ),
    storage: StorageOpt = None,
    select: Annotated[str, typer.Option(help="greedy (Caruana selection), pareto (the front) or topk.")] = "greedy",
    k: Annotated[int, typer.Option(min=1, help="topk: how many trials.")] = 5,
    max_params: Annotated[
        int | None, typer.Option(min=1, help="Budget: total parameters of the distinct members.")
    ] = None,
    metric: Annotated[
        str, typer.Option(help="Validation metric that selects and ranks: auc, accuracy, logloss or brier.")
    ] = "auc",
    refit: Annotated[bool, typer.Option("--refit", help="Retrain each member on train + validation.")] = False,
    calibration: Annotated[str, typer.Option(help="temperature (fitted on validation) or none.")] = "temperature",
    operating_point: Annotated[
        str,
        typer.Option(help="Decision threshold, chosen on validation: youden, sensitivity=0.90 or specificity=0.95."),
    ] = "youden",
    onnx: Annotated[Path | None, typer.Option(help="Also write the ensemble as one ONNX graph here.")] = None,
    torchscript: Annotated[Path | None, typer.Option(help="Also write it as a TorchScript module here (.ts).")] = None,
    monai_bundle: Annotated[Path | None, typer.Option(help="Also write it as a MONAI bundle in this folder.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --monai-bundle folder.")] = False,
    device: Annotated[str, typer.Option(help="--refit: auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Export a study's best trials as one calibrated ensemble file with its decision threshold."""
    from nasopt.ensemble.export import export_study

    dev = "cpu"
    if refit:
        from nasopt.training.fit import resolve_device

        dev = resolve_device(device)
    if onnx is not None or monai_bundle is not None:  # before the export's work: bad input fails fast
        from nasopt.ensemble import deploy

        if onnx is not None:
            deploy.check_onnx()
        if monai_bundle is not None:
            deploy.check_bundle_folder(monai_bundle, force)
    result = export_study(study, storage, out, select, metric, k, max_params, refit, dev, calibration, operating_point)
    total = sum(r.params for r, _ in result.members)
    shown = metric if metric in ("auc", "accuracy") else "auc"  # a trial's record holds uncalibrated losses
    for r, count in sorted(result.members, key=lambda m: -m[1]):
        console.print(
            f"  trial {r.number:>4}  weight {count:>2}  params {r.params:>10,}  "
            f"val {shown} {r.metrics.get(shown, float('nan')):.3f}  {r.arch.summary()}"
        )
    console.print(
        f"{result.path}: {len(result.members)} member(s) of study {study!r}, {total:,} parameters, "
        f"{select} selection, validation {metric} {result.selection.val_score:.3f}"
        + (" (refitted on train + validation)" if result.refit else "")
    )
    cal, point = result.calibration, result.operating_point
    console.print(
        (f"calibration: temperature {cal.temperature:.3f}, fitted on {cal.fitted_on}" if cal else "calibration: none")
        + f"; threshold {point.threshold:.3f} ({point.rule} on validation: sensitivity {point.val_sensitivity:.3f}, "
        f"specificity {point.val_specificity:.3f})"
    )
    for note in result.notes:
        console.print(f"note: {escape(note)}", highlight=False)
    if onnx is None and torchscript is None and monai_bundle is None:
        return
    from nasopt.ensemble import deploy
    from nasopt.ensemble.module import load_ensemble

    ensemble = load_ensemble(result.path)
    s = ensemble.input_size
    if onnx is not None:
        path = deploy.export_onnx(ensemble, onnx)
        console.print(f"{path}: ONNX graph, hu (B, 1, {s}, {s}, {s}) -> prob_malignant (B,), malignant (B,)")
    if torchscript is not None:
        path = deploy.export_torchscript(ensemble, torchscript)
        console.print(f"{path}: TorchScript, hu (B, 1, {s}, {s}, {s}) -> (prob_malignant (B,), malignant (B,))")
    if monai_bundle is not None:
        path = deploy.export_monai_bundle(ensemble, monai_bundle, force=force)
        console.print(f"{path}: MONAI bundle (configs/metadata.json, configs/inference.json, models/model.ts)")


def _print_scores(title: str, result: object) -> None:
    """An evaluation's or a cross-validation's table, its paired comparisons and its notes."""
    from nasopt.visualization.report import metrics_table

    console.print(metrics_table(escape(title), result.rows, match_mm=result.size_match_mm))
    for comparison in result.comparisons:
        console.print(escape(comparison.line()), highlight=False)
    for note in result.notes:
        console.print(f"note: {escape(note)}", highlight=False)


SizeMatchOpt = Annotated[
    float | None,
    typer.Option(min=0, help="Size-matched AUC: pairs whose diameters differ by at most this many mm [2]."),
]


@app.command()
def evaluate(
    file: Annotated[Path, typer.Argument(help="Ensemble file written by `nasopt export`.")],
    data: Annotated[
        list[str] | None, typer.Option(help="Override a recorded data setting, e.g. cache_dir=/shared/cache.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    figures: Annotated[
        Path | None, typer.Option(help="Folder: write roc.png (operating point marked) and reliability.png.")
    ] = None,
    size_match_mm: SizeMatchOpt = None,
) -> None:
    """Evaluate an ensemble, a size baseline and each member on the held-out test fold."""
    import json

    from nasopt.evaluation.evaluate import evaluate as run

    result = run(file, list(data or []), match_mm=size_match_mm)
    if figures is not None:
        from nasopt.visualization.evaluation import write_figures

        result.notes.append(f"figures: {', '.join(str(p) for p in write_figures(result, figures))}")
    if json_out:
        print(json.dumps(result.to_json(), indent=2))
        return
    title = f"{file}: held-out test fold, {result.n_test} nodules ({result.n_malignant} malignant)"
    _print_scores(title, result)


@app.command()
def crossval(
    study: Annotated[str | None, typer.Option(help="Study name: cross-validate one of its trials.")] = None,
    trial: Annotated[
        int | None, typer.Option(help="With --study: this trial (else the front's best validation AUC).")
    ] = None,
    ensemble: Annotated[
        Path | None, typer.Option(help="Ensemble file written by `nasopt export`: cross-validate its members.")
    ] = None,
    storage: StorageOpt = None,
    folds: Annotated[str, typer.Option(help="Outer folds to test on: all, or e.g. 0,2 or 0-4.")] = "all",
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs per fold (else the study's train.epochs).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    size_match_mm: SizeMatchOpt = None,
) -> None:
    """Train a fixed architecture (or ensemble) on all outer folds but k and test on k, for each
    chosen fold k: the paper's 10-fold protocol, beside a size baseline fitted on the same folds."""
    import json

    from nasopt.errors import ConfigError

    if (study is None) == (ensemble is None):
        raise ConfigError("crossval: give exactly one of --study NAME or --ensemble FILE")
    if trial is not None and study is None:
        raise ConfigError("--trial picks a trial of --study; an ensemble's members are fixed")
    from nasopt.evaluation.crossval import crossval as run
    from nasopt.evaluation.crossval import parse_folds, plan_ensemble, plan_study
    from nasopt.training.fit import resolve_device

    chosen = parse_folds(folds)  # before the study and data: bad input fails fast
    dev = resolve_device(device)
    from nasopt.storages.study import load_study
    from nasopt.storages.url import open_storage

    def open_study(name: str):
        return load_study(name, open_storage(storage, heartbeat=None, create=False))

    plan = plan_study(study, open_study, trial) if study is not None else plan_ensemble(ensemble, open_study)
    out = _console(stderr=True) if json_out else console  # keep stdout pure JSON
    result = run(plan, chosen, epochs, dev, lambda line: out.print(escape(line), highlight=False), size_match_mm)
    if json_out:
        print(json.dumps(result.to_json(), indent=2))
        return
    n, epochs = len(result.folds), result.epochs
    title = f"{result.label}: {n} outer fold(s), each tested after {epochs} epoch(s) on the others"
    _print_scores(title, result)


@app.command()
def predict(
    file: Annotated[Path, typer.Argument(help="Ensemble file written by `nasopt export`.")],
    inputs: Annotated[
        list[str],
        typer.Argument(help="HU crops (.npy, S³ at 1 mm) or CT volumes (.mhd, .mha, .nii, .nii.gz, DICOM folder)."),
    ],
    centres: Annotated[
        Path | None, typer.Option(help="CSV with a header and columns input,x,y,z: nodule centres, rows per volume.")
    ] = None,
    centre: Annotated[str | None, typer.Option(help="X,Y,Z: one nodule centre for every volume input.")] = None,
    coords: Annotated[
        str, typer.Option(help="Centres in world mm (patient LPS, as SimpleITK) or voxel (continuous i,j,k index).")
    ] = "world",
    out: Annotated[Path | None, typer.Option(help="CSV to write (else the CSV is printed).")] = None,
    save_crops: Annotated[Path | None, typer.Option(help="Folder: write each crop the networks saw as .npy.")] = None,
) -> None:
    """Predict malignancy for nodule crops or for nodule centres in CT volumes, one CSV row per nodule."""
    from nasopt.inference.predict import csv_text, result_table, write_csv
    from nasopt.inference.predict import predict as run

    result = run(file, inputs, centre=centre, centres_csv=centres, coords=coords, save_crops=save_crops)
    notes = _console(stderr=True) if out is None else console  # stdout carries the CSV
    if out is None:
        sys.stdout.write(csv_text(result))
    else:
        console.print(result_table(result, f"{file}: P(malignant) of {len(result.rows)} nodule(s)"))
        console.print(f"{escape(str(write_csv(result, out)))}: {len(result.rows)} row(s)", highlight=False)
    if save_crops is not None:
        notes.print(f"crops fed to the networks: {escape(str(save_crops))}/", highlight=False)
    for note in result.notes:
        notes.print(f"note: {escape(note)}", highlight=False)


@app.command()
def report(
    study: Annotated[str, typer.Option(help="Study name.")] = "nasopt",
    storage: StorageOpt = None,
    out: Annotated[
        Path, typer.Option(help="Folder for pareto.png, hypervolume.png, curves.png, index.html, summary.md.")
    ] = Path("storage/report"),
    device_name: DeviceNameOpt = None,
) -> None:
    """Write a study's Pareto front, hypervolume and learning-curve figures and an HTML page."""
    from nasopt.visualization.report import write_report

    path = write_report(study, storage, out, device_name)
    console.print(f"report of study {study!r}: {path / 'index.html'}")


@app.command()
def explain(
    file: Annotated[Path, typer.Argument(help="Ensemble file written by `nasopt export`.")],
    inputs: Annotated[
        list[str], typer.Argument(help="HU crops (.npy) or CT volumes (.mhd, .nii, .nii.gz, DICOM folder).")
    ],
    out: Annotated[Path, typer.Option(help="Folder for one PNG per crop.")] = Path("storage/explain"),
    centre: Annotated[str | None, typer.Option(help="Nodule centre X,Y,Z for every volume.")] = None,
    centres: Annotated[Path | None, typer.Option(help="CSV with columns input,x,y,z.")] = None,
    coords: Annotated[str, typer.Option(help="world (mm, LPS) or voxel (continuous index).")] = "world",
) -> None:
    """Draw each member's CBAM attention and the ensemble's weighted mean over the three mid-planes."""
    from nasopt.visualization.explain import explain as run

    written, notes = run(file, inputs, out, centre=centre, centres_csv=centres, coords=coords)
    for path in written:
        console.print(str(path))
    for note in notes:
        console.print(f"note: {escape(note)}", highlight=False)


def main() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # nasopt prints its own progress
    try:
        code = app(standalone_mode=False)  # returns Typer's exit code instead of exiting
    except NasoptError as exc:
        message = escape(str(exc))  # messages quote TOML like [space]; not rich markup
        _console(stderr=True).print(f"[bold red]error:[/bold red] {message}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        code = 130
    except (typer.Abort, typer.Exit) as exc:
        sys.exit(getattr(exc, "exit_code", 1))
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        # Typer 0.29 bundles its own click (typer._click); older ones use click. Both have these.
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    if code == 130:  # Typer turns Ctrl-C into exit code 130
        _console(stderr=True).print("interrupted; run the same command again to resume")
        # The interrupted trial is already stored as failed. Exit here: when the Ctrl-C landed
        # inside an import, CPython 3.11 still ends a normal exit with SIGINT (status -2, not 130).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
