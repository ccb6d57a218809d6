"""Turn a timed-out or broken collective into one line that names the rank that did not answer.

Every process group has the configured timeout (`parallel.timeout_minutes`), so a rank that
hangs or dies makes the others' collective fail instead of blocking forever (gloo raises; NCCL's
watchdog aborts the communicator). What the raw error does not say is *who* hung. For that each
run keeps a small gloo "health" group, and after a collective failure every surviving rank
enters torch's `monitored_barrier` on it: rank 0 learns exactly which ranks never arrived.
"""

from __future__ import annotations

import datetime
import re

import torch.distributed as dist

from megadyt.errors import MegadytError

_HEALTH = {"group": None, "timeout": None}
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
HEALTH_CHECK_MAX_SECONDS = 60.0


class CollectiveTimeoutError(MegadytError):
    """A collective did not complete in time; not a user mistake, so exit code 1."""

    exit_code = 1


def create_health_group(timeout: datetime.timedelta) -> None:
    """Called once on every rank right after the default process group exists (collective)."""
    if dist.get_world_size() == 1:
        return
    _HEALTH["group"] = dist.new_group(backend="gloo", timeout=timeout)
    _HEALTH["timeout"] = timeout


def forget_health_group() -> None:
    _HEALTH["group"] = _HEALTH["timeout"] = None


def is_collective_failure(exc: BaseException) -> bool:
    """True for the errors torch.distributed raises when a peer hangs, dies or disconnects."""
    if isinstance(exc, (dist.DistBackendError, dist.DistNetworkError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(word in text for word in _FAILURE_WORDS)


def silent_ranks(check_seconds: float) -> list[int] | None:
    """Ranks that did not reach the health barrier within `check_seconds` (rank 0's view).

    Other ranks learn only whether rank 0 answered: [0] if it did not, [] if it did. None when
    there is nothing to ask (one process, or no health group)."""
    group = _HEALTH["group"]
    if group is None:
        return None
    try:
        dist.monitored_barrier(
            group=group, timeout=datetime.timedelta(seconds=check_seconds), wait_all_ranks=True
        )
        return []
    except Exception as exc:  # noqa: BLE001 - the message is what we are after
        if dist.get_rank() != 0:
            return [0]
        text = str(exc)
        match = re.search(r"Ranks? ([\d, ]+) failed to pass", text)
        if match:
            return [int(r) for r in re.findall(r"\d+", match.group(1))]
        return sorted({int(r) for r in re.findall(r"[Rr]ank (\d+)", text)} - {0})


def diagnose_collective_failure(exc: BaseException) -> CollectiveTimeoutError:
    """The one-line error for a failed collective, naming the silent ranks where we can."""
    timeout = _HEALTH["timeout"]
    limit = f"{timeout.total_seconds() / 60:g} min" if timeout else "the configured timeout"
    check = min(timeout.total_seconds(), HEALTH_CHECK_MAX_SECONDS) if timeout else 10.0
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
        if me != 0:
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
