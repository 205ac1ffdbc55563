"""`nasopt dashboard` end to end: over HTTP it serves each trial's note and artifacts, and a real
headless Chromium renders a trial page with the architecture table and the PNG artifacts."""

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import NamedTuple

import pytest

PNG = b"\x89PNG\r\n\x1a\n"
TABLE_HEADER = "| part | blocks | widths | CBAM |"
# A trial's four artifacts: file name (after trial-N) -> the user attribute holding its artifact id.
ARTIFACTS = {
    ".safetensors": "artifact_weights",
    "-val-predictions.json": "artifact_val_predictions",
    "-learning-curve.png": "artifact_curve_png",
    "-attention.png": "artifact_attention_png",
}
PNG_KEYS = ("artifact_curve_png", "artifact_attention_png")
# Headless as root, and nothing but the page on the network (no updates, sync, QUIC probes or proxy).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-proxy-server",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]

# Straight to the loopback server, whatever http_proxy says.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str) -> tuple[str, bytes]:
    with _http.open(url, timeout=10) as r:
        return r.headers.get_content_type(), r.read()


def get_json(url: str):
    return json.loads(get(url)[1])


class Served(NamedTuple):
    base: str  # http://127.0.0.1:PORT
    port: int
    study_id: int
    trials: list[dict]  # the complete trials, as /api/studies/<id> serves them
    log: Path


@pytest.fixture(scope="module")
def served(searched_study, tmp_path_factory) -> Iterator[Served]:
    """`nasopt dashboard` (default host) on a free loopback port, for the searched study; stopped afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("dashboard") / "server.log"
    env = dict(os.environ, COLUMNS="200", PYTHONUNBUFFERED="1")
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "nasopt", "dashboard", "--port", str(port)],
            cwd=searched_study,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:  # bounded polling until the server answers
            try:
                studies = get_json(f"{base}/api/studies")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"dashboard did not answer (exit {server.poll()}): {log.read_text()}")
                time.sleep(0.2)
        assert [s["study_name"] for s in studies["study_summaries"]] == ["demo"]
        study_id = studies["study_summaries"][0]["study_id"]
        detail = get_json(f"{base}/api/studies/{study_id}")
        trials = [t for t in detail["trials"] if t["state"] == "Complete"]
        assert trials, detail["trials"]
        yield Served(base, port, study_id, trials, log)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def user_attrs(trial: dict) -> dict[str, str]:
    return {a["key"]: a["value"] for a in trial["user_attrs"]}


def artifact_url(served: Served, trial: dict, artifact_id: str) -> str:
    return f"{served.base}/artifacts/{served.study_id}/{trial['trial_id']}/{artifact_id}"


def test_dashboard_listens_on_loopback_only_by_default(served):
    log = served.log.read_text()
    assert f"http://127.0.0.1:{served.port}/" in log and "warning" not in log.lower(), log
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port = local.split(":")
            if state == "0A" and int(port, 16) == served.port:  # 0A: LISTEN
                # an IPv4 address is one host-order word; an IPv6 one stays hex and fails the check
                listening.append(
                    socket.inet_ntoa(struct.pack("=I", int(address, 16))) if len(address) == 8 else address
                )
    if not listening:
        pytest.skip("the listening socket is not in /proc/net/tcp*")
    assert set(listening) == {"127.0.0.1"}, listening  # not 0.0.0.0 or ::


def test_dashboard_serves_each_trials_note_and_artifacts(served, searched_study):
    page_type, page = get(f"{served.base}/dashboard")
    assert page_type == "text/html" and b"<html" in page.lower()
    for trial in served.trials:
        n, attrs = trial["number"], user_attrs(trial)
        assert "arch" in attrs
        note = trial["note"]["body"]
        assert note.startswith(f"### Trial {n}"), note
        lines = note.splitlines()
        assert TABLE_HEADER in lines, note
        assert any(line.startswith("| stem |") for line in lines), note
        assert any(line.startswith("| stage 1 |") for line in lines), note

        served_artifacts = {a["filename"]: a for a in trial["artifacts"]}
        for suffix, key in ARTIFACTS.items():
            name = f"trial-{n}{suffix}"
            assert name in served_artifacts, (name, sorted(served_artifacts))
            meta = served_artifacts[name]
            assert meta["artifact_id"] == attrs[key]
            content_type, body = get(artifact_url(served, trial, meta["artifact_id"]))
            assert body == (searched_study / "storage" / "artifacts" / meta["artifact_id"]).read_bytes()
            if key in PNG_KEYS:
                assert meta["mimetype"] == "image/png"
                assert content_type.startswith("image/"), content_type
                assert body.startswith(PNG) and len(body) > 1000
            elif key == "artifact_val_predictions":
                json.loads(body)
            else:
                assert len(body) > 1000  # the weights


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    message = "Chromium not found (Debian: apt-get install chromium)"
    if os.environ.get("CI"):  # .ci/run installs it: a missing browser there is a failure
        pytest.fail(message)
    pytest.skip(message)


class _Page(HTMLParser):
    """The rendered DOM's <img> sources and each <table>'s rows of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs).get("src") or "")
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("th", "td"):
            self._cell = []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self._cell is not None:
            if self.tables and self.tables[-1]:
                self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None


def test_chromium_renders_a_trial_page_with_the_architecture_table_and_pngs(served, tmp_path):
    browser = chromium()
    trial = served.trials[-1]
    url = f"{served.base}/dashboard/studies/{served.study_id}/trials?numbers={trial['number']}"
    shot = tmp_path / "trial.png"
    cmd = [
        browser,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1400,1800",
        "--virtual-time-budget=15000",
        f"--screenshot={shot}",
        "--dump-dom",
        url,
    ]
    # Its own process group, so that no renderer or helper outlives the test.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=dict(os.environ, HOME=str(tmp_path)),
    )
    try:
        dom, err = proc.communicate(timeout=90)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.returncode == 0, err[-3000:]

    page = _Page()
    page.feed(dom)
    notes = [t for t in page.tables if t and t[0] == ["part", "blocks", "widths", "CBAM"]]
    assert notes, (page.tables, dom[-3000:])
    assert [row[0] for row in notes[0][1:3]] == ["stem", "stage 1"], notes[0]
    attrs = user_attrs(trial)
    for key in PNG_KEYS:
        assert f"/artifacts/{served.study_id}/{trial['trial_id']}/{attrs[key]}" in page.images, page.images

    assert shot.is_file() and shot.read_bytes().startswith(PNG)
    assert shot.stat().st_size > 10_000, shot.stat().st_size
    print(f"screenshot of {url}: {shot}")
