"""Whether every zero-shot task can load its documents here, before anything waits on them.

A three-week run must not end with a dataset error. So `megadyt train` resolves every configured
task at start-up (`resolve_tasks`), and a task whose dataset is neither in the Hugging Face
cache nor downloadable stops the run in one line naming the task and the command that caches
it: `megadyt eval --prefetch --tasks ...` (`prefetch`), run on a node that reaches the hub
(a login node) with the same HF_HOME as the compute nodes.

The offline tasks build their documents from the built-in corpus, so they always resolve; a
configuration of offline tasks only costs nothing here. A hub task is resolved by loading it
through lm-eval, which reads its cache or downloads it.

Where the hub cannot be reached at all (a compute node without network), the `datasets`
library retries each dataset for about 25 s before it falls back to its cache. So
`cache_only_if_hub_unreachable` probes the hub once and then sets HF_HUB_OFFLINE=1 for this
process, before `datasets` is imported: cached datasets load at once, missing ones fail at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Iterator
from urllib.parse import urlparse

from megadyt.errors import MegadytError
from megadyt.evaluation.harness import expand_tasks, load_tasks, task_manager
from megadyt.evaluation.offline import OFFLINE_TASKS, using_cache_dir

HUB_PROBE_TIMEOUT_S = 3.0
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_reachable(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub (HF_ENDPOINT, default huggingface.co) opens; True
    behind a proxy, which this probe cannot see through."""
    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def cache_only_if_hub_unreachable(tasks: list[str]) -> bool:
    """Set HF_HUB_OFFLINE=1 when `tasks` (suites or names) need the hub and it cannot be reached
    from here (and nothing chose a mode yet, and `datasets` is not imported yet: it reads the
    variable once). Returns whether it did."""
    if all(name in OFFLINE_TASKS for name in expand_tasks(tasks)):
        return False
    if any(os.environ.get(v) for v in OFFLINE_VARIABLES) or "datasets" in sys.modules:
        return False
    if hub_reachable():
        return False
    os.environ["HF_HUB_OFFLINE"] = "1"
    return True


@contextlib.contextmanager
def _quiet_task_configs() -> Iterator[None]:
    """lm-eval warns about every task config's defaults as it loads; here, loading is a check."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def task_problems(names: list[str], cache_dir: str) -> dict[str, str]:
    """{task: why it cannot load here} for task names (suites expanded)."""
    hub_tasks = [name for name in names if name not in OFFLINE_TASKS]
    if not hub_tasks:
        return {}
    with using_cache_dir(cache_dir), _quiet_task_configs():
        _, problems = load_tasks(hub_tasks, task_manager())
    return problems


def refusal(problems: dict[str, str]) -> str:
    """The one line that stops a run whose tasks cannot load: which, why, and the fix."""
    unknown = [name for name, why in problems.items() if why.startswith("unknown task")]
    if unknown:
        return (
            f"zero-shot task(s) {', '.join(unknown)} unknown: not in lm-eval's tasks or "
            "evaluation/tasks; fix train.zero_shot_tasks / train.final_zero_shot_tasks"
        )
    names = list(problems)
    why = problems[names[0]]
    return (
        f"zero-shot task(s) {', '.join(names)} cannot load on this node: the dataset is neither "
        f"in the Hugging Face cache nor downloadable here ({names[0]}: {why}); cache it on a "
        f"login node with `megadyt eval --prefetch --tasks {','.join(names)}` (with the HF_HOME "
        "the compute nodes use), or drop the task from the config"
    )


def resolve_tasks(tasks: list[str], cache_dir: str) -> None:
    """Raise the one-line refusal when any of `tasks` (suites or names) cannot load here."""
    problems = task_problems(expand_tasks(tasks), cache_dir)
    if problems:
        raise MegadytError(refusal(problems))


def prefetch(tasks: str, cache_dir: str) -> dict[str, str | None]:
    """Load every task once (downloading its dataset into the Hugging Face cache, or building the
    offline tasks' documents under `cache_dir`): {task: None when ready, else why not}."""
    names = expand_tasks(tasks)
    with using_cache_dir(cache_dir), _quiet_task_configs():
        loaded, problems = load_tasks(names, task_manager())
    return {name: problems.get(name) if name not in loaded else None for name in names}
