"""A launch plan: does a config fit a cluster, how long is a step (and a checkpoint save), and
what to change if it does not fit."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

from megadyt.config.schema import Config
from megadyt.config.validate import validate_config
from megadyt.errors import ConfigError, MegadytError
from megadyt.model.counting import count_parameters
from megadyt.model.flops import flops_per_token
from megadyt.planning.checkpoint import (
    DEFAULT_FS_BANDWIDTH_GBS,
    CheckpointEstimate,
    check_bandwidth,
    checkpoint_estimate,
)
from megadyt.planning.eval_memory import eval_tp_choice
from megadyt.planning.memory import GB, MemoryBreakdown, memory_breakdown, params_per_rank

PAPER_TOKEN_BUDGET = 200e9
DEFAULT_PEAK_TFLOPS = 989.0  # H100 SXM dense bf16


class LayoutError(MegadytError):
    """The parallel layout does not divide the cluster or the batch."""


class DoesNotFit(MegadytError):
    """The layout divides but needs more memory per device than there is."""


@dataclass
class Plan:
    nodes: int
    gpus_per_node: int
    world_size: int
    tp: int
    dp: int
    micro_batch_size: int
    grad_accumulation: int
    global_batch_sequences: int
    global_batch_tokens: int
    steps: int
    train_tokens: int
    steps_for_200b: int
    params_total: int
    params_per_rank: float
    memory: MemoryBreakdown
    device_memory_gb: float
    fits: bool
    model_flops_per_step: float
    peak_tflops: float
    mfu: float
    step_time_s: float
    train_time_h: float
    device: str
    checkpoint: CheckpointEstimate
    settings: dict = field(default_factory=dict)
    suggestion: str | None = None
    stop_grace_s: float | None = None  # the time SLURM gives a graceful stop, when stated
    evaluation: dict = field(default_factory=dict)  # planning.eval_memory.eval_tp_choice
    zero_shot: dict = field(default_factory=dict)  # "periodic"/"final": eval_cost.ZeroShotCost

    @property
    def stop_s(self) -> float:
        """The time a graceful stop takes: the step in progress, then one checkpoint save."""
        return self.step_time_s + self.checkpoint.save_s

    def as_dict(self) -> dict:
        skip = ("memory", "checkpoint", "zero_shot")
        out = {k: v for k, v in self.__dict__.items() if k not in skip}
        out["zero_shot"] = {k: cost.as_dict() for k, cost in self.zero_shot.items()}
        out["memory_gb"] = self.memory.as_gb()
        out["checkpoint"] = self.checkpoint.as_dict()
        out["stop_s"] = self.stop_s
        return out


def check_stop_grace(plan: Plan, grace_s: float) -> None:
    """Refuse a run whose graceful stop cannot finish inside the time SLURM gives it: the lead
    of `--signal=B:USR1@N` before the time limit (or a preemption's GraceTime). A stop that
    does not fit loses every step since the previous checkpoint, and the job is not requeued."""
    if not (math.isfinite(grace_s) and grace_s > 0):
        raise MegadytError(f"--stop-grace-s must be a positive number of seconds, got {grace_s}")
    if plan.stop_s <= grace_s:
        return
    lead = 60 * math.ceil(1.5 * plan.stop_s / 60)
    raise MegadytError(
        f"a graceful stop needs about {plan.stop_s:.0f} s (one step, {plan.step_time_s:.0f} s, "
        f"and one checkpoint save, {plan.checkpoint.save_s:.0f} s at "
        f"{plan.checkpoint.fs_bandwidth_gbs:g} GB/s) but the stop grace is {grace_s:g} s: "
        f"submit with --signal=B:USR1@{lead} and STOP_GRACE_S={lead}, or pass your file "
        "system's measured --fs-bandwidth-gbs"
    )


def _valid_layout(cfg: Config, world: int, gpus_per_node: int) -> None:
    p = cfg.parallel
    if p.tp > gpus_per_node:
        raise LayoutError(
            f"parallel.tp ({p.tp}) exceeds the GPUs per node ({gpus_per_node}); tensor "
            "parallelism must stay inside one node"
        )
    try:
        validate_config(cfg, world_size=world)
    except ConfigError as exc:
        raise LayoutError(f"layout does not divide: {exc}") from None


def make_plan(
    cfg: Config,
    nodes: int,
    gpus_per_node: int,
    gpu_memory_gb: float = 80.0,
    mfu: float = 0.4,
    peak_tflops: float | None = None,
    device: str = "gpu",
    fs_bandwidth_gbs: float = DEFAULT_FS_BANDWIDTH_GBS,
) -> Plan:
    """Plan `cfg` on nodes × gpus_per_node devices; raises LayoutError if it does not divide."""
    _check_arguments(nodes, gpus_per_node, mfu, fs_bandwidth_gbs)
    world = nodes * gpus_per_node
    _valid_layout(cfg, world, gpus_per_node)
    m, p, t = cfg.model, cfg.parallel, cfg.train
    dp = world // p.tp
    on_gpu = device == "gpu"
    bf16 = t.precision == "bf16" or (t.precision == "auto" and on_gpu)
    mem = memory_breakdown(cfg, dp, bf16=bf16, on_gpu=on_gpu)
    tokens_per_step = cfg.tokens_per_step
    flops_step = flops_per_token(cfg.model) * tokens_per_step
    peak = peak_tflops or t.peak_tflops or DEFAULT_PEAK_TFLOPS
    step_time = flops_step / (world * peak * 1e12 * mfu)
    return Plan(
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        world_size=world,
        tp=p.tp,
        dp=dp,
        micro_batch_size=t.micro_batch_size,
        grad_accumulation=t.global_batch_size // (t.micro_batch_size * dp),
        global_batch_sequences=t.global_batch_size,
        global_batch_tokens=tokens_per_step,
        steps=t.steps,
        train_tokens=t.steps * tokens_per_step,
        steps_for_200b=-(-int(PAPER_TOKEN_BUDGET) // tokens_per_step),
        params_total=count_parameters(m).total,
        params_per_rank=round(params_per_rank(cfg)),
        memory=mem,
        device_memory_gb=gpu_memory_gb,
        fits=mem.total <= gpu_memory_gb * GB,
        model_flops_per_step=flops_step,
        peak_tflops=peak,
        mfu=mfu,
        step_time_s=step_time,
        train_time_h=step_time * t.steps / 3600,
        device=device,
        checkpoint=checkpoint_estimate(cfg, world, bf16, step_time, fs_bandwidth_gbs),
        evaluation=eval_tp_choice(cfg, gpu_memory_gb, on_gpu=on_gpu),
        settings=_settings(cfg, bf16),
    )


def _check_arguments(nodes: int, gpus_per_node: int, mfu: float, fs_bandwidth_gbs: float) -> None:
    if nodes < 1 or gpus_per_node < 1:
        raise LayoutError(f"--nodes and --gpus-per-node must be >= 1, got {nodes}, {gpus_per_node}")
    if not 0 < mfu <= 1:
        raise MegadytError(f"--mfu must be in (0, 1], got {mfu}")
    check_bandwidth(fs_bandwidth_gbs)


def _settings(cfg: Config, bf16: bool) -> dict:
    """The settings a plan names (and `megadyt plan` suggests changes to)."""
    p, t = cfg.parallel, cfg.train
    return {
        "tp": p.tp,
        "sp": p.sp,
        "zero_stage": p.zero_stage,
        "offload_optimizer": p.offload_optimizer,
        "recompute": p.recompute,
        "micro_batch_size": t.micro_batch_size,
        "precision": "bf16" if bf16 else "fp32",
    }


def _candidates(cfg: Config, gpus_per_node: int):
    """Single changes in the order to try: more TP, higher ZeRO stage, recompute, smaller micro,
    and last optimizer offload (at ZeRO 2 or above): it frees the most, but moves the optimizer
    states to host memory and their update to the CPU."""
    p, t = cfg.parallel, cfg.train
    tp = p.tp * 2
    while tp <= gpus_per_node:
        yield {"parallel.tp": tp, **({"parallel.sp": True} if p.tp == 1 else {})}
        tp *= 2
    for stage in range(p.zero_stage + 1, 4):
        yield {"parallel.zero_stage": stage}
    order = ["none", "selective", "full"]
    for mode in order[order.index(p.recompute) + 1 :]:
        yield {"parallel.recompute": mode}
    mbs = t.micro_batch_size // 2
    while mbs >= 1:
        yield {"train.micro_batch_size": mbs}
        mbs //= 2
    if not p.offload_optimizer:
        yield {"parallel.zero_stage": max(2, p.zero_stage), "parallel.offload_optimizer": True}


def _apply(cfg: Config, changes: dict) -> Config:
    """`cfg` with `changes`; a ZeRO stage is never lowered (offload asks for at least 2)."""
    new = copy.deepcopy(cfg)
    for key, value in changes.items():
        section, name = key.split(".")
        if key == "parallel.zero_stage":
            value = max(value, new.parallel.zero_stage)
        setattr(getattr(new, section), name, value)
    return new


def _applied(cfg: Config, keys) -> dict:
    """The values `cfg` holds for the dotted `keys`."""
    return {key: getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1]) for key in keys}


def _fits(cfg: Config, **kwargs) -> bool:
    try:
        return make_plan(cfg, **kwargs).fits
    except MegadytError:
        return False


def suggest(cfg: Config, **kwargs) -> dict | None:
    """The first single change (in the documented order) that fits; failing that, the changes
    accumulated greedily in that order until it fits. None if nothing fits."""
    gpus = kwargs["gpus_per_node"]
    for change in _candidates(cfg, gpus):
        if _fits(_apply(cfg, change), **kwargs):
            return change
    combined: dict = {}
    current = cfg
    for change in _candidates(cfg, gpus):
        trial = _apply(current, change)
        try:
            make_plan(trial, **kwargs)
        except MegadytError:
            continue  # this change does not divide; skip it
        combined.update(_applied(trial, change))
        current = trial
        if _fits(current, **kwargs):
            return combined
    return None


def format_change(change: dict) -> str:
    return " ".join(
        f"--set {k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in change.items()
    )
