"""The stages of benchmarks/gpu_check.py; each returns its figures (and a markdown table).

Every stage takes the check's Context and its Guards; the train stage guards each configuration
inside its own guard. `--smoke` shrinks every stage to a toy size that runs on a CPU.
"""

from __future__ import annotations

import contextlib
import json
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

GPU_TESTS = ["tests/test_gpu_kernels.py", "tests/test_gpu_training.py"]
DESCRIPTIONS = {
    "kernels": "norms.py: DyT/Derf Triton, torch rms_norm, Liger DyT/RMSNorm; HBM floor",
    "train": "~1.1B bf16, one configuration after another (rebuilt each time):",
    "profile": "torch.profiler over steps only, compiled rmsnorm and dyt: top kernels",
    "memory": "megadyt plan's memory against the train stage's peaks",
    "gpu-tests": "pytest -m gpu (whatever time is left)",
}
# (configuration, seconds on one H100/H200), most decisive first: the targets compare compiled
# DyT with HF eager, compiled RMSNorm and HF compiled
TRAIN_CONFIGS = [
    ("hf eager", 15),
    ("dyt compiled", 40),
    ("rmsnorm compiled", 35),
    ("hf compiled", 35),
    ("dyt eager", 15),
    ("rmsnorm eager", 15),
    ("derf compiled", 30),
    ("derf eager", 15),
]
# on a CPU each compiled configuration costs tens of seconds of compiling: one is enough there
SMOKE_CONFIGS = ["hf eager", "dyt compiled", "rmsnorm eager"]
STEPS = 6  # the first (warm-up, compile) is dropped
TOP_KERNELS = 12


class StageTimeout(Exception):
    pass


class Guards:
    """Nested deadlines on one SIGALRM timer: the innermost one that expires raises
    StageTimeout in the main thread (at the next Python instruction: a CUDA synchronize or a
    collective finishes first)."""

    def __init__(self) -> None:
        self.deadlines: list[tuple[float, float]] = []  # (deadline, seconds)
        signal.signal(signal.SIGALRM, self._expired)

    def _expired(self, signum, frame):
        _, seconds = min(self.deadlines)
        raise StageTimeout(f"over its {seconds:.0f} s guard")

    def _arm(self) -> None:
        delay = min(self.deadlines)[0] - time.monotonic() if self.deadlines else 0.0
        signal.setitimer(signal.ITIMER_REAL, max(delay, 1e-3) if self.deadlines else 0.0)

    @contextlib.contextmanager
    def guard(self, seconds: float):
        self.deadlines.append((time.monotonic() + seconds, seconds))
        self._arm()
        try:
            yield
        finally:
            self.deadlines.pop()
            self._arm()

    def left(self) -> float:
        return min(self.deadlines)[0] - time.monotonic() if self.deadlines else float("inf")


@dataclass
class Context:
    out: Path
    smoke: bool
    start_s: float
    train_rows: list[dict] = field(default_factory=list)

    @classmethod
    def start(cls, out: Path, smoke: bool) -> Context:
        """Import everything and start CUDA and the process group (NCCL on CUDA) once."""
        start = time.monotonic()
        import torch  # noqa: F401
        import train_steps  # noqa: F401

        from megadyt.parallel.distributed import init_distributed

        init_distributed(tp=1)
        return cls(out, smoke, time.monotonic() - start)

    @property
    def size(self) -> str:
        return "tiny" if self.smoke else "1b"


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


# ------------------------------------------------------------------------------ kernels


def kernels(ctx: Context, guards) -> dict:
    import norms

    path = ctx.out / "kernels-norms.json"
    if ctx.smoke:
        argv = ["--device", "cpu", "--dtypes", "fp32", "--shapes", "64x256", "--impls"]
        argv += ["reference", "--warmup", "1", "--repeats", "2"]
    else:
        argv = ["--device", "cuda", "--dtypes", "bf16", "--shapes", "4096x4096", "8192x8192"]
        argv += ["--impls", "triton"]
    norms.main([*argv, "--output", str(path)])
    result = json.loads(path.read_text())
    table = ["| shape | op | impl | pass | ms | of HBM floor | vs rms_norm |", "|" + "---|" * 7]
    table += [
        f"| {r['shape']} | {r['op']} | {r['impl']} | {r['pass']} | {r['ms']:.3f} "
        f"| {r['floor_fraction']:.2f} | {r['vs_rmsnorm_torch']:.2f}x |"
        for r in result["rows"]
    ]
    return {**result, "table": table}


# -------------------------------------------------------------------------------- train


def _run_config(ctx: Context, name: str) -> dict:
    import train_steps

    kind, mode = name.split()
    compiled = mode == "compiled"
    norm = "rmsnorm" if kind == "hf" else kind
    config, overrides = train_steps.megadyt_overrides(ctx.size, norm, compiled, STEPS)
    cfg = train_steps.megadyt_config(ctx.size, norm, compiled, STEPS)
    before = _compile_seconds()
    if kind == "hf":
        result = train_steps.hf_steps(cfg, STEPS, compiled)
        result["compile"] = {"compile/seconds": _compile_seconds() - before} if compiled else None
    else:
        result = train_steps.megadyt_steps(cfg, STEPS)
    timed = result["tokens_per_s"][1:]
    return {
        "name": name,
        "size": ctx.size,
        "norm": "hf-llama" if kind == "hf" else norm,
        "compiled": compiled,
        "nproc": 1,
        "tokens_per_s": statistics.median(timed),
        "mfu": statistics.median(result["mfu"][1:]),
        "steps_tokens_per_s": timed,
        "first_step_s": result["seconds"][0],
        "compile": result.get("compile"),
        "max_memory_gib": result["max_memory_gib"],
        "config": config,
        "overrides": overrides,
    }


def _compile_seconds() -> float:
    from megadyt.training.compile import _dynamo_compile_seconds

    return _dynamo_compile_seconds() or 0.0


def train(ctx: Context, guards) -> dict:
    import train_steps

    names = SMOKE_CONFIGS if ctx.smoke else [n for n, _ in TRAIN_CONFIGS]
    estimate = dict(TRAIN_CONFIGS)
    rows, skipped = [], {}
    for name in names:
        if not ctx.smoke and guards.left() < estimate[name] / 2:
            skipped[name] = "no time left in the stage"
            continue
        try:
            with guards.guard(guards.left() if ctx.smoke else 2 * estimate[name]):
                rows.append(_run_config(ctx, name))
            print(f"train: {name}: {rows[-1]['tokens_per_s']:,.0f} tok/s", flush=True)
        except StageTimeout as exc:
            if guards.left() <= 0:
                raise
            skipped[name] = f"timed out ({exc})"
        except Exception as exc:  # the next configuration still runs
            skipped[name] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        finally:
            train_steps.release()
    _ratios(rows)
    ctx.train_rows = rows
    status = "ok" if not skipped else f"{len(skipped)} of {len(names)} configurations not run"
    return {
        "status": status,
        "machine": {"device": device_name() if not ctx.smoke else "cpu"},
        "steps": STEPS,
        "rows": rows,
        "not_run": skipped,
        "table": _train_table(rows),
    }


def _ratios(rows: list[dict]) -> None:
    by_name = {r["name"]: r["tokens_per_s"] for r in rows}
    for r in rows:
        mode = "compiled" if r["compiled"] else "eager"
        for key, base in (
            ("vs_hf_eager", "hf eager"),
            ("vs_hf_compiled", "hf compiled"),
            ("vs_rmsnorm", f"rmsnorm {mode}"),
        ):
            if key == "vs_rmsnorm" and r["norm"] == "hf-llama":
                continue
            if base in by_name and r["name"] != base:
                r[key] = r["tokens_per_s"] / by_name[base]


def _train_table(rows: list[dict]) -> list[str]:
    def ratio(r, key):
        return f"{r[key]:.2f}x" if key in r else "-"

    table = ["| config | tokens/s | vs HF eager | vs HF compiled | vs rmsnorm | MFU "
             "| compile s | peak GiB |", "|---|" + "---:|" * 7]  # fmt: skip
    for r in rows:
        compile_s = (r["compile"] or {}).get("compile/seconds")
        memory = r["max_memory_gib"]
        table.append(
            f"| {r['name']} | {r['tokens_per_s']:,.0f} | {ratio(r, 'vs_hf_eager')} "
            f"| {ratio(r, 'vs_hf_compiled')} | {ratio(r, 'vs_rmsnorm')} | {r['mfu']:.1%} "
            f"| {'-' if compile_s is None else f'{compile_s:.0f}'} "
            f"| {'-' if memory is None else f'{memory:.1f}'} |"
        )
    return table


# ------------------------------------------------------------------------------ profile


def profile(ctx: Context, guards) -> dict:
    import train_steps

    runs = []
    for norm in ["dyt"] if ctx.smoke else ["rmsnorm", "dyt"]:
        cfg = train_steps.megadyt_config(ctx.size, norm, True, 4)
        runs.append(train_steps.profile_steps(cfg, TOP_KERNELS))  # compiles from the cache
        train_steps.release()
    table = []
    for run in runs:
        table += [
            f"{run['norm']} compiled: {run['total_ms_per_step']:.1f} ms of {run['timed_by']} "
            f"per step, {run['wall_ms_per_step']:.1f} ms wall",
            "",
            "| kernel | ms/step | calls/step |",
            "|---|---:|---:|",
        ]
        table += [
            f"| {t['op'][:70]} | {t['ms_per_step']:.2f} | {t['calls_per_step']:.0f} |"
            for t in run["top"]
        ]
        table.append("")
    return {"runs": runs, "table": table}


# ------------------------------------------------------------------------------- memory


def memory(ctx: Context, guards) -> dict:
    import plan_memory
    import torch

    if not ctx.train_rows:
        return {"status": "no train rows to compare", "rows": []}
    path = ctx.out / "memory-input.json"
    report = {"machine": {"device": "cpu" if ctx.smoke else "gpu"}, "steps": STEPS}
    path.write_text(json.dumps({**report, "rows": ctx.train_rows}))
    gpu_gb = torch.cuda.get_device_properties(0).total_memory / 1e9 if not ctx.smoke else 80.0
    rows = plan_memory.compare(path, gpu_gb)
    path.unlink()
    table = ["| config | predicted GB | measured GB | ratio |", "|---|---:|---:|---:|"]
    for row, train_row in zip(rows, [r for r in ctx.train_rows if r["norm"] != "hf-llama"]):
        row["name"] = train_row["name"]
        measured, ratio = row["measured_gb"], row["ratio"]
        table.append(
            f"| {row['name']} | {row['predicted_comparable_gb']:.1f} "
            f"| {'-' if measured is None else f'{measured:.1f}'} "
            f"| {'-' if ratio is None else f'{ratio:.2f}'} |"
        )
    return {"rows": rows, "table": table}


# ---------------------------------------------------------------------------- gpu-tests

RESULT_LINE = re.compile(r"^(tests/\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)")


def gpu_tests(ctx: Context, guards) -> dict:
    """pytest -m gpu in a child process, stopped before this stage's guard; each test's outcome
    is read from pytest's verbose lines as they come, so a cut run still reports the finished
    ones."""
    log = ctx.out / "gpu-tests.log"
    cmd = [sys.executable, "-m", "pytest", "-v", "-m", "gpu", *GPU_TESTS, "-p", "no:cacheprovider"]
    timeout = max(guards.left() - 5, 1)
    status = "ok"
    with open(log, "w") as handle:
        try:
            proc = subprocess.run(cmd, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                  timeout=timeout)  # fmt: skip
            if proc.returncode not in (0, 5):  # 5: nothing collected or all deselected
                status = f"pytest exited {proc.returncode}"
        except subprocess.TimeoutExpired:
            status = f"cut after {timeout:.0f} s"
    outcomes: dict[str, str] = {}
    for line in log.read_text().splitlines():
        match = RESULT_LINE.match(line)
        if match:
            outcomes[match.group(1)] = match.group(2)
    counts = {k: list(outcomes.values()).count(k) for k in sorted(set(outcomes.values()))}
    table = [", ".join(f"{v} {k.lower()}" for k, v in counts.items()) or "no test finished"]
    return {"status": status, "outcomes": outcomes, "counts": counts, "table": table}


STAGE_FUNCTIONS = {
    "kernels": kernels,
    "train": train,
    "profile": profile,
    "memory": memory,
    "gpu-tests": gpu_tests,
}
