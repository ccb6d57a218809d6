"""One writer per run: rank 0 of `megadyt train` holds RUN/lock for the life of the run.

A double submit, or a manual resubmit while SLURM requeues, would otherwise write the same
checkpoints and metrics from two jobs. Two layers guard the run, because no single mechanism
works on every cluster file system:

- an `flock` on the lock file. The kernel drops it when the holder dies, so on a local disk it
  is exact. On NFS, Linux maps flock onto NFS byte-range locks (lockd / NFSv4), which every
  client sees. On Lustre it reaches other nodes only when mounted with `-o flock`; with
  `localflock` it guards one node, and without either it fails with ENOSYS.
- a lease. The file records host, PID, SLURM job id, start time and a heartbeat that a thread
  renews every `HEARTBEAT_SECONDS`. A holder on another host whose heartbeat is younger than
  `LEASE_SECONDS` counts as alive even where file-system locks are node-local or missing.

A record left behind is taken over, with a warning, when no flock is held on the file and:
- its holder ran on this host and its PID is gone; or
- it is this SLURM job's earlier run (a requeue keeps the job id); or
- its lease has expired.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path

from megadyt.atomic import pid_alive
from megadyt.errors import MegadytError

HEARTBEAT_SECONDS = 30.0
LEASE_SECONDS = 300.0
RECORD_BYTES = 1024  # the record is rewritten in place, padded to one fixed size
# errnos meaning "this file system has no (working) file locks": the lease alone guards then
NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


def _job_id() -> str | None:
    return os.environ.get("SLURM_JOB_ID") or None


def _describe(record: dict, now: float) -> str:
    job = f", SLURM job {record['job_id']}" if record.get("job_id") else ""
    age = max(0.0, now - float(record.get("heartbeat", 0)))
    return (
        f"host {record.get('host')} PID {record.get('pid')}{job}, started "
        f"{record.get('started')}, last heartbeat {age:.0f} s ago"
    )


class RunLock:
    """The exclusive lock on one run directory's lock file (`acquire`, `release`)."""

    def __init__(
        self,
        path: Path,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.path = Path(path)
        self.heartbeat_seconds, self.lease_seconds = heartbeat_seconds, lease_seconds
        self._fd: int | None = None
        self._record: dict = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.warning: str | None = None  # set when a stale holder was taken over

    def acquire(self) -> None:
        """Take the lock or raise a one-line MegadytError naming its holder."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise MegadytError(
                f"cannot create the run lock {self.path}: {exc.strerror or exc}; make run.dir "
                "writable or choose another one"
            ) from exc
        try:
            has_flock = self._flock(fd)
            previous = self._read(fd)
            self._judge(previous, has_flock)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        now = time.time()
        self._record = {
            "state": "held",
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "job_id": _job_id(),
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "heartbeat": now,
            "flock": has_flock,
        }
        try:
            self._write(self._record)
        except OSError as exc:
            self.release()
            raise MegadytError(
                f"cannot write the run lock {self.path}: {exc.strerror or exc}; free space in "
                "run.dir or choose another one"
            ) from exc
        self._thread = threading.Thread(target=self._beat, name="megadyt-run-lock", daemon=True)
        self._thread.start()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Mark the record released and drop the flock (idempotent)."""
        if self._fd is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self._write({**self._record, "state": "released", "heartbeat": time.time()})
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # -- internals ---------------------------------------------------------------------------
    def _flock(self, fd: int) -> bool:
        """True when this process now holds the flock; False on a file system without locks."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            record = self._read(fd) or {}
            raise MegadytError(
                f"run.dir {self.path.parent} is in use by another megadyt train "
                f"({_describe(record, time.time())}); wait for it to finish, stop it, or "
                "choose another run.dir"
            ) from None
        except OSError as exc:
            if exc.errno in NO_LOCKS:
                return False
            raise MegadytError(f"cannot lock {self.path}: {exc.strerror or exc}") from exc

    def _judge(self, previous: dict | None, has_flock: bool) -> None:
        """Refuse a live holder, or note the takeover of a stale one."""
        if not previous or previous.get("state") != "held":
            return
        now = time.time()
        same_host = previous.get("host") == socket.gethostname()
        if same_host and (has_flock or not pid_alive(int(previous.get("pid", 0)))):
            reason = "its process is gone"
        elif previous.get("unreadable") and has_flock:
            reason = "its record is unreadable and no process holds the file lock"
        elif _job_id() is not None and previous.get("job_id") == _job_id():
            reason = "it is this SLURM job's earlier run (requeued)"
        elif now - float(previous.get("heartbeat", 0)) > self.lease_seconds:
            reason = f"its lease expired ({self.lease_seconds:.0f} s without a heartbeat)"
        else:
            raise MegadytError(
                f"run.dir {self.path.parent} is in use by another megadyt train "
                f"({_describe(previous, now)}); if that job is dead, wait "
                f"{self.lease_seconds:.0f} s after its last heartbeat or delete {self.path}"
            )
        self.warning = (
            f"took over the stale lock {self.path} ({_describe(previous, now)}): {reason}"
        )

    def _read(self, fd: int) -> dict | None:
        """The record in the file (read through `fd`; never reopen the file while holding it)."""
        raw = os.pread(fd, RECORD_BYTES, 0).decode("utf-8", "replace").strip()
        if not raw:
            return None
        try:
            record = json.loads(raw)
        except json.JSONDecodeError:
            # unreadable (being rewritten, or damaged): an unknown holder, alive as of the mtime
            mtime = os.fstat(fd).st_mtime
            return {"state": "held", "host": "?", "pid": 0, "heartbeat": mtime, "unreadable": True}
        return record if isinstance(record, dict) else None

    def _write(self, record: dict) -> None:
        data = json.dumps(record).encode()
        if len(data) > RECORD_BYTES:
            raise ValueError(f"lock record over {RECORD_BYTES} bytes")
        os.pwrite(self._fd, data.ljust(RECORD_BYTES), 0)  # one write; JSON allows the padding
        os.fsync(self._fd)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            self._record["heartbeat"] = time.time()
            with contextlib.suppress(OSError):  # a full disk must not kill the run over this
                self._write(self._record)
