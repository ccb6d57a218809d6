"""Turn a timed-out or broken collective into one line that names the rank that did not answer.

Every process group has the configured timeout (`parallel.timeout_minutes`), so a rank that
hangs or dies makes the others' collective fail instead of blocking forever (gloo raises; NCCL's
watchdog aborts the communicator). What the raw error does not say is *who* hung or died. So
after a collective failure every surviving rank checks in at the process group's key-value store
(torch's TCPStore, which torchrun's agent or rank 0 holds, outside any collective), and rank 0
waits a bounded time for every rank: the ones that never check in are named. A store is used
rather than a barrier because a barrier over a dead rank's closed connection fails at once
without saying whose connection it was.
"""

from __future__ import annotations

import datetime
import json
import time

import torch.distributed as dist

from megadyt.errors import MegadytError

_HEALTH: dict = {"store": None, "timeout": None, "checks": 0}
_FAILURE_WORDS = (
    "timed out",
    "timeout",
    "connection closed",
    "connection reset",
    "broken pipe",
    "watchdog",
    "failed to recv",
    "failed to send",
)
_DEATH_WORDS = ("connection closed", "connection reset", "broken pipe")
HEALTH_CHECK_MAX_SECONDS = 60.0
DEAD_PEER_CHECK_SECONDS = 10.0
POLL_SECONDS = 0.2


class CollectiveTimeoutError(MegadytError):
    """A collective did not complete in time; not a user mistake, so exit code 1."""

    exit_code = 1


def create_health_group(timeout: datetime.timedelta) -> None:
    """Called on every rank right after the default process group exists: remember its store."""
    if dist.get_world_size() == 1:
        return
    _HEALTH.update(store=dist.distributed_c10d._get_default_store(), timeout=timeout, checks=0)


def forget_health_group() -> None:
    _HEALTH.update(store=None, timeout=None, checks=0)


def is_collective_failure(exc: BaseException) -> bool:
    """True for the errors torch.distributed raises when a peer hangs, dies or disconnects."""
    if isinstance(exc, (dist.DistBackendError, dist.DistNetworkError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(word in text for word in _FAILURE_WORDS)


def silent_ranks(check_seconds: float) -> list[int] | None:
    """Ranks that did not check in at the store within `check_seconds` (rank 0's view).

    Other ranks learn rank 0's verdict, or [0] when it gives none in time (it, or its node,
    is gone). None when there is nothing to ask (one process, or no store)."""
    store = _HEALTH["store"]
    if store is None:
        return None
    _HEALTH["checks"] += 1
    key = f"megadyt/health/{_HEALTH['checks']}"
    me, world = dist.get_rank(), dist.get_world_size()
    try:
        store.set(f"{key}/{me}", "here")
        if me != 0:
            store.wait([f"{key}/verdict"], datetime.timedelta(seconds=check_seconds + 10))
            return json.loads(store.get(f"{key}/verdict"))
        deadline = time.monotonic() + check_seconds
        missing = list(range(1, world))
        while missing and time.monotonic() < deadline:
            missing = [r for r in missing if not store.check([f"{key}/{r}"])]
            time.sleep(POLL_SECONDS if missing else 0)
        store.set(f"{key}/verdict", json.dumps(missing))
        return missing
    except Exception:  # noqa: BLE001 - the store itself is gone: rank 0's side failed
        return [0] if me != 0 else None


def diagnose_collective_failure(exc: BaseException) -> CollectiveTimeoutError:
    """The one-line error for a failed collective, naming the silent ranks where we can."""
    timeout = _HEALTH["timeout"]
    limit = f"{timeout.total_seconds() / 60:g} min" if timeout else "the configured timeout"
    check = min(timeout.total_seconds(), HEALTH_CHECK_MAX_SECONDS) if timeout else 10.0
    if any(word in str(exc).lower() for word in _DEATH_WORDS):
        # a peer's process is gone: the live ranks failed with it and check in at once, and a
        # launcher that ends the job on a failed task (srun --kill-on-bad-exit) gives
        # this rank only its KillWait (30 s by default) to say whom
        check = min(check, DEAD_PEER_CHECK_SECONDS)
    silent = silent_ranks(check)
    me = dist.get_rank()
    first_line = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    if silent is None:
        return CollectiveTimeoutError(
            f"a collective failed ({first_line}); check the network and rerun to resume"
        )
    if silent:
        who = ", ".join(str(r) for r in silent)
        what = f"rank {who} did not answer" if len(silent) == 1 else f"ranks {who} did not answer"
        if silent == [0]:  # rank 0 gave no verdict (it never names itself)
            what = "rank 0 did not answer the health check (it, or a rank it waits for, hangs)"
        return CollectiveTimeoutError(
            f"rank {me}: a collective failed within parallel.timeout_minutes ({limit}) and "
            f"{what}: it hangs or died; check that rank's log and node, then rerun to resume "
            f"from the last checkpoint ({first_line})"
        )
    return CollectiveTimeoutError(
        f"rank {me}: a collective failed ({first_line}); every rank answered the health check "
        f"afterwards, so one was only slow: raise parallel.timeout_minutes (now {limit}) or "
        "check the network, then rerun to resume"
    )
