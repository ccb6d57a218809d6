"""Training steps timed inside this process: megadyt's trainer and the Hugging Face baseline,
rebuilt for each configuration, so imports, CUDA and NCCL start-up are paid once for them all.

benchmarks/gpu_check.py measures every training configuration this way, and
benchmarks/profile_train.py profiles steps with it. A megadyt configuration runs the real
`Trainer` (DeepSpeed engine, α calibration, compiled layers when train.compile says so) and
times `Trainer.train_step` -- no run directory is written, nothing is saved, and the steps are
not log steps, so the saturation monitor does not sample. Both sides train on the same random
token ids (throughput does not depend on their values). On CUDA every step ends with a
synchronize; figures per step: seconds, tokens/s, MFU against the datasheet peak.

    python benchmarks/train_steps.py --size tiny --norm dyt --compile on --steps 3   # one run
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # megadyt, and the benchmark modules

import torch  # noqa: E402
import train_throughput  # noqa: E402

from megadyt.config import load_config  # noqa: E402
from megadyt.config.schema import Config  # noqa: E402
from megadyt.model.flops import flops_per_token  # noqa: E402
from megadyt.training.metrics import peak_tflops  # noqa: E402


class RandomTokens:
    """Fixed random token ids: the trainer's token-source interface (tokens, labels, mask)."""

    def __init__(self, samples: int, seq: int, vocab: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.data = torch.randint(0, vocab, (samples, seq + 1), generator=generator)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        x = self.data[i]
        return {"tokens": x[:-1], "labels": x[1:], "loss_mask": torch.ones(len(x) - 1)}


def megadyt_config(size: str, norm: str, compiled: bool, steps: int, extra=()) -> Config:
    """train_throughput.py's config of `size`/`norm` (one process), compile on or off."""
    path, overrides = megadyt_overrides(size, norm, compiled, steps, extra)
    return load_config(str(HERE.parent / path), overrides)


def megadyt_overrides(size: str, norm: str, compiled: bool, steps: int, extra=()):
    path, overrides = train_throughput.megadyt_config(size, norm, steps, 1, Path("unused"))
    overrides = [o for o in overrides if not o.startswith("run.dir=")]
    # no log step among the timed ones (the monitor samples at log steps, and the last step is
    # one): a run far longer than the steps timed
    no_log = [f"train.steps={100 * steps}", f"train.log_interval={100 * steps}"]
    overrides += [*extra, f"train.compile={'on' if compiled else 'off'}", *no_log]
    return path, overrides


def release() -> None:
    """Free what the last configuration held: compiled graphs (they keep their modules alive),
    then the memory."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _figures(cfg: Config, seconds: list[float]) -> dict:
    """Per-step tokens/s and MFU from per-step seconds (one process)."""
    tokens = cfg.train.global_batch_size * cfg.model.seq_length
    peak, flops = peak_tflops(cfg), flops_per_token(cfg.model)
    tps = [tokens / s for s in seconds]
    return {
        "seconds": seconds,
        "tokens_per_s": tps,
        "mfu": [x * flops / 1e12 / peak for x in tps],
        "peak_tflops": peak,
        "tokens_per_step": tokens,
    }


def megadyt_steps(cfg: Config, steps: int, profiler=None) -> dict:
    """Build the trainer for `cfg` and time `steps` optimizer steps (the first compiles where
    train.compile is on); `profiler`, when given, is stepped after each step."""
    from megadyt.parallel.distributed import init_distributed, launcher_variables
    from megadyt.training.trainer import Trainer

    init_distributed(cfg.parallel.tp, cfg.parallel.backend)
    t = cfg.train
    data = RandomTokens(steps * t.global_batch_size, cfg.model.seq_length, cfg.model.vocab_size)
    seconds, compile_report = [], None
    with tempfile.TemporaryDirectory() as tmp, launcher_variables():
        cfg.run.dir = tmp
        start = time.perf_counter()
        trainer = Trainer(cfg, data, None)
        build_s = time.perf_counter() - start
        if trainer.compilation is not None:
            trainer.compilation.mark()
        for step in range(steps):
            _synchronize()
            start = time.perf_counter()
            trainer.train_step(step)
            _synchronize()
            seconds.append(time.perf_counter() - start)
            if step == 0 and trainer.compilation is not None:
                compile_report = trainer.compilation.first_report()
            if profiler is not None:
                profiler.step()
        del trainer
    result = _figures(cfg, seconds)
    result.update(build_s=build_s, max_memory_gib=_peak_memory_gib())
    if compile_report is not None:
        result["compile"] = {"line": compile_report.line(), **compile_report.scalars()}
    return result


def hf_steps(cfg: Config, steps: int, compiled: bool) -> dict:
    """The HF baseline (benchmarks/hf_baseline.py) of `cfg`'s shape, in this process."""
    import hf_baseline

    info = hf_baseline.train(cfg, steps, compiled)
    result = _figures(cfg, info["seconds"])
    result["max_memory_gib"] = info["max_memory_gib"]
    return result


def profile_steps(cfg: Config, top: int = 12) -> dict:
    """torch.profiler over two training steps of `cfg` (after one that compiles and one that
    warms up): the operators and kernels with the most self time (device time on CUDA, else
    CPU), per step, and the wall time of those steps."""
    from torch.profiler import ProfilerActivity, profile, schedule

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    with profile(activities=activities, schedule=schedule(wait=1, warmup=1, active=2)) as prof:
        result = megadyt_steps(cfg, 4, profiler=prof)
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    return {
        "norm": cfg.model.norm,
        "compiled": cfg.train.compile,
        "timed_by": key,
        "wall_ms_per_step": 1e3 * sum(result["seconds"][2:]) / 2,
        "total_ms_per_step": sum(getattr(e, key) for e in events) / 1e3 / 2,
        "top": [
            {"op": e.key, "ms_per_step": getattr(e, key) / 1e3 / 2, "calls_per_step": e.count / 2}
            for e in events[:top]
        ],
    }


def _peak_memory_gib() -> float | None:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=list(train_throughput.SIZES))
    parser.add_argument("--norm", default="dyt", choices=[*train_throughput.NORMS, "hf"])
    parser.add_argument("--compile", choices=["on", "off"], default="off")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    compiled = args.compile == "on"
    norm = "rmsnorm" if args.norm == "hf" else args.norm
    cfg = megadyt_config(args.size, norm, compiled, args.steps)
    if args.norm == "hf":
        result = hf_steps(cfg, args.steps, compiled)
    else:
        result = megadyt_steps(cfg, args.steps)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
