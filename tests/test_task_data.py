"""Zero-shot tasks resolved before anything waits on them: `megadyt train` refuses a task whose
dataset is neither cached nor downloadable, in one line naming it and the command that caches
it, before its first step; `megadyt eval --prefetch` caches tasks without a model.

This machine reaches no hub: HF_HUB_OFFLINE=1 and an empty HF_HOME make that explicit (and the
same on machines that do), so the hub tasks cannot load and the offline ones must.
"""

from __future__ import annotations

import socket

from helpers import TINY_CLI_RUN, clean_env, run_cli

from megadyt.evaluation.harness import PAPER15


def _no_hub(tmp_path) -> dict[str, str]:
    return clean_env(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))


def test_train_refuses_uncached_tasks_before_its_first_step(tmp_path):
    run_dir = tmp_path / "run"
    sets = [*TINY_CLI_RUN, f"run.dir={run_dir}", "train.zero_shot_tasks=[stdlib_nextline]",
            "train.final_zero_shot_tasks=[paper15]"]  # fmt: skip
    proc = run_cli("train", "--config", "configs/tiny/dyt.yaml",
                   *[a for s in sets for a in ("--set", s)], env=_no_hub(tmp_path))  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = proc.stderr.strip().splitlines()
    names = ", ".join(PAPER15)  # every one of them, and not the offline task
    assert line.startswith(f"megadyt: error: zero-shot task(s) {names} cannot load on this node")
    assert f"`megadyt eval --prefetch --tasks {','.join(PAPER15)}`" in line
    assert "Traceback" not in proc.stderr and "step " not in proc.stdout
    assert not run_dir.exists()  # refused before the run was taken: nothing written


def test_prefetch_builds_offline_tasks_and_names_what_cannot_load(tmp_path):
    cache = tmp_path / "cache"
    env = _no_hub(tmp_path) | {"MEGADYT_CACHE_DIR": str(cache)}
    proc = run_cli("eval", "--prefetch", "--tasks", "stdlib_nextline,arc_easy", env=env)
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "stdlib_nextline: ready" in lines and lines[-1] == "1 of 2 tasks ready"
    (arc,) = [x for x in lines if x.startswith("arc_easy: ")]
    assert "Hugging Face hub" in arc
    assert (cache / "eval" / "stdlib_nextline-v1.jsonl").stat().st_size > 0  # built, no model


def test_the_hub_probe_sees_an_open_and_a_closed_endpoint(monkeypatch):
    from megadyt.evaluation.task_data import hub_reachable

    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        assert hub_reachable(timeout_s=2)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")  # nobody listens now
    assert not hub_reachable(timeout_s=2)
