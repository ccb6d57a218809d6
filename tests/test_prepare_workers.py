"""`megadyt prepare-data --workers N`: a `kill -9` of the main process takes its tokenizer workers
with it at once and quietly (no orphans tokenizing on, no BrokenPipeError tracebacks)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT

from megadyt.data.spm import train_sentencepiece

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")

DOCS = 1200  # ~10 MB of text: the two workers tokenize for many seconds


def _text(i: int) -> str:
    words = [f"w{(i * 31 + k * 7) % 997}x{k % 13}" for k in range(1500)]
    return f"document {i} " + " ".join(words)


def _children(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (from /proc: psutil is not a dependency)."""
    out = []
    for entry in Path("/proc").iterdir():
        stat = _stat(int(entry.name)) if entry.name.isdigit() else None
        if stat is not None and stat[1] == pid and stat[0] != "Z":
            out.append(int(entry.name))
    return out


def _is_worker(pid: int) -> bool:
    """A multiprocessing spawn child (not the resource tracker)."""
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"  # an unreaped orphan is dead too


def _wait(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# A worker's life in miniature: CHILD arms `exit_with_parent` for MIDDLE (its parent), reports
# its pid and then works on; the test kills MIDDLE with SIGKILL. argv: parent pid, path.
CHILD = """
import sys, time
from megadyt.data import lifeline
if sys.argv[2] == "poll":
    lifeline._death_signal = lambda signum: False  # as on a system without prctl
lifeline.exit_with_parent(int(sys.argv[1]))
print("ready", flush=True)
while True:
    time.sleep(0.01)
"""
MIDDLE = """
import os, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid()), sys.argv[2]])
time.sleep(60)
"""


@pytest.mark.parametrize("path", ["prctl", "poll"])
def test_exit_with_parent(path):
    middle = subprocess.Popen(
        [sys.executable, "-c", MIDDLE, CHILD, path],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert middle.stdout.readline() == "ready\n", middle.stderr.read()
        (child,) = _children(middle.pid)
        middle.kill()
        middle.wait(timeout=10)
        _wait(lambda: not _alive(child), 3, f"pid {child} to exit after its parent")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(middle.pid, signal.SIGKILL)  # strays, if the test failed
        _, errors = middle.communicate()
    assert errors == ""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(tokenizer .model, Pile-format shard) big enough to keep two workers busy."""
    root = tmp_path_factory.mktemp("workers")
    model = train_sentencepiece([_text(i) for i in range(40)], 300, str(root / "tok.model"))
    shard = root / "docs.jsonl"
    shard.write_text("".join(json.dumps({"text": _text(i)}) + "\n" for i in range(DOCS)))
    return model, str(shard)


def test_kill_9_of_main_process_ends_its_workers_quietly(corpus, tmp_path):
    model, shard = corpus
    prefix = tmp_path / "out"
    cmd = [sys.executable, "-m", "megadyt", "prepare-data", "--input", shard, "--tokenizer"]
    cmd += [model, "--output-prefix", str(prefix), "--workers", "2", "--quiet"]
    stderr = tmp_path / "stderr.txt"
    with open(stderr, "wb") as err:  # the workers inherit it: their tracebacks land here too
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
        )
    children: list[int] = []
    try:
        temp_bin = tmp_path / f"out.bin.tmp-{proc.pid}"

        def busy() -> bool:  # results are being written: the workers are mid-queue
            children[:] = _children(proc.pid)  # the workers and the resource tracker
            workers = [pid for pid in children if _is_worker(pid)]
            return temp_bin.exists() and temp_bin.stat().st_size > 0 and len(workers) == 2

        _wait(busy, 60, f"two busy workers ({stderr.read_text()[-2000:]})")
        proc.kill()
        proc.wait(timeout=10)
        _wait(lambda: not any(map(_alive, children)), 5, f"workers {children} to exit")
    finally:
        for pid in [proc.pid, *children]:  # never leave strays behind, even on failure
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    log = stderr.read_text()
    assert "Traceback" not in log and "BrokenPipeError" not in log, log[-3000:]
    assert not (tmp_path / "out.idx").exists()
