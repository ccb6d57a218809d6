"""What tests share: repository paths, the small training config and its token source, tiny
CLI runs, clean subprocess environments, and the fused-norm inputs.

Test modules import them with `from helpers import ...` (tests/ is on sys.path: pytest puts the
rootdir conftest's folder there, and the processes `run_distributed` spawns inherit it), so
these are plain module-level names rather than fixtures. pytest's own hooks and fixtures stay in
conftest.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from megadyt.training.run.layout import RunDir

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TINY = CONFIGS / "tiny" / "dyt.yaml"  # the default config of most CLI tests
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

# The small model of the in-process training and tensor-parallel tests: 2 layers, width 64, GQA,
# 256 token ids (TokenSource's), 32 positions.
SMALL_MODEL = [
    "model.num_layers=2",
    "model.hidden_size=64",
    "model.num_attention_heads=4",
    "model.num_query_groups=2",
    "model.ffn_hidden_size=96",
    "model.vocab_size=256",
    "model.seq_length=32",
]
# SMALL_MODEL as DyT trained for 10 steps of 8 sequences (test_training and the tests built on
# its trainer runs: calibration, saturation, checkpoint safety).
SMALL_TRAINING = [
    *SMALL_MODEL,
    "model.norm=dyt",
    "train.steps=10",
    "train.micro_batch_size=2",
    "train.global_batch_size=8",
    "train.lr=3e-3",
    "train.log_interval=1",
    "train.eval_interval=5",
    "train.eval_iters=1",
    "train.save_interval=5",
]
# `megadyt train --config configs/tiny/NORM.yaml` shrunk to a few seconds (evaluation, compare).
TINY_CLI_RUN = [
    "model.num_layers=2",
    "model.hidden_size=64",
    "model.ffn_hidden_size=176",
    "model.seq_length=64",
    "train.steps=4",
    "train.log_interval=1",
    "train.eval_interval=2",
    "train.eval_iters=1",
    "train.global_batch_size=4",
    "train.micro_batch_size=4",
]


class TokenSource:
    """Fixed pseudo-random documents: the trainer's token-source interface in its simplest form."""

    def __init__(self, samples: int, seq: int, seed: int, zero_mask_at: set[int] = frozenset()):
        import torch

        # arithmetic sequences mod 256 with a random start and stride: learnable structure
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, 256, (samples, 1), generator=g)
        stride = torch.randint(1, 8, (samples, 1), generator=g)
        self.data = (start + stride * torch.arange(seq + 1)) % 256
        self.zero_mask_at = zero_mask_at

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        import torch

        x = self.data[i]
        mask = torch.zeros(len(x) - 1) if i in self.zero_mask_at else torch.ones(len(x) - 1)
        return {"tokens": x[:-1], "labels": x[1:], "loss_mask": mask}


def small_config(overrides: list[str], base: list[str] = SMALL_TRAINING):
    """The validated Config of `base` (no YAML file) plus `overrides`."""
    from megadyt.config import load_config

    return load_config(None, [*base, *overrides])


def train_small(
    overrides: list[str],
    base: list[str] = SMALL_TRAINING,
    data=None,
    allow_config_change: bool = False,
):
    """Train `small_config(overrides, base)` in this process on TokenSource data (by default
    steps × 8 training and 8 validation sequences); returns the trainer's result."""
    from megatron.core import parallel_state

    from megadyt.training.trainer import train

    cfg = small_config(overrides, base)
    if data is None:
        data = (TokenSource(cfg.train.steps * 8, 32, 0), TokenSource(8, 32, 1))
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()  # the next layout may use another TP size
    return train(cfg, data, allow_config_change=allow_config_change)


def metrics_records(run_dir: Path) -> list[dict]:
    """Every record of a run's metrics.jsonl, in order."""
    return [json.loads(x) for x in RunDir(run_dir).metrics.read_text().splitlines()]


def logged_losses(run_dir: Path) -> dict[int, float]:
    """step -> training loss from metrics.jsonl; a step logged twice (before a crash or a stop,
    and again after the resume) keeps the last."""
    return {r["step"]: r["loss"] for r in metrics_records(run_dir) if "loss" in r}


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the launcher variables an in-process init_distributed set
    (a subprocess would otherwise join this process's rendezvous port), plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}, **extra}


def train_tiny(run_dir: Path, norm: str = "dyt", extra: list[str] = ()) -> Path:
    """`megadyt train` on configs/tiny/NORM.yaml shrunk by TINY_CLI_RUN, in a subprocess."""
    args = [sys.executable, "-m", "megadyt", "train", "--config", f"configs/tiny/{norm}.yaml"]
    for item in [*TINY_CLI_RUN, *extra, f"run.dir={run_dir}"]:
        args += ["--set", item]
    proc = subprocess.run(
        args, cwd=ROOT, capture_output=True, text=True, timeout=300, env=clean_env()
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


# `megadyt train` on configs/tiny/dyt.yaml as a real process, small enough to kill and resume
# within seconds (crash/resume and periodic-evaluation tests).
CLI_SMALL_RUN = [
    "model.num_layers=2",
    "model.hidden_size=64",
    "model.ffn_hidden_size=96",
    "model.seq_length=64",
    "train.micro_batch_size=4",
    "train.global_batch_size=8",
    "train.log_interval=1",
    "train.eval_interval=1000",
    "parallel.zero_stage=1",
    f"data.cache_dir={ROOT / 'data_cache'}",
]


def train_command(run_dir: Path, steps: int, save_interval: int) -> list[str]:
    """The argv of that run, writing to `run_dir`."""
    sets = [
        *CLI_SMALL_RUN,
        f"train.steps={steps}",
        f"train.save_interval={save_interval}",
        f"run.dir={run_dir}",
    ]
    return [
        sys.executable,
        "-m",
        "megadyt",
        "train",
        "--config",
        "configs/tiny/dyt.yaml",
        *[a for s in sets for a in ("--set", s)],
    ]


# The inputs of one DyT/Derf call, in the order the norm functions take them.
NORM_INPUT_NAMES = ("x", "alpha", "shift", "weight", "bias")


def norm_inputs(kind: str, shape, dtype, with_bias: bool, seed: int = 0):
    """({name: tensor or None}, upstream gradient) in `dtype` on the CPU: x spread into tanh/erf
    saturation and non-trivial α, s, γ, β (the fused-kernel tests, CPU and GPU)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n = shape[-1]
    t = {
        "x": torch.randn(*shape, generator=g) * 2.0,
        "alpha": torch.tensor([0.73]),
        "shift": torch.tensor([0.21]) if kind == "derf" else None,
        "weight": torch.randn(n, generator=g) * 0.5 + 1.0,
        "bias": torch.randn(n, generator=g) * 0.1 if with_bias else None,
    }
    upstream = torch.randn(*shape, generator=g).to(dtype)
    return {k: None if v is None else v.to(dtype) for k, v in t.items()}, upstream


def run_cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None):
    """`python -m megadyt ARGS` as a real process from the repository root, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "megadyt", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env=env,
    )
