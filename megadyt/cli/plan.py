"""`megadyt plan`: prove a parallel layout fits before a cluster is booked.

Prints world/DP size, batch and token arithmetic, per-device memory (weights, grads, optimizer
states, activations, overhead; model in megadyt/planning/README.md), model FLOPs per step, the
step time at a stated MFU, and one checkpoint's size and save time at a stated file-system
bandwidth. Exits 2 with one line and the smallest fitting change when the layout
does not divide or does not fit. `--print run_dir|run_name` prints one config value for the
launch scripts (no cluster arguments needed).
"""

from __future__ import annotations

import argparse
import json

from megadyt.cli.main import add_config_arguments
from megadyt.config import load_config
from megadyt.errors import MegadytError
from megadyt.planning.checkpoint import DEFAULT_FS_BANDWIDTH_GBS, HASH_GBS
from megadyt.training.run.layout import RunDir

HELP = "check that a config's parallel layout fits a cluster; memory, FLOPs and step time"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--nodes", type=int, help="number of nodes")
    parser.add_argument("--gpus-per-node", type=int, help="devices (ranks) per node")
    parser.add_argument("--gpu-memory-gb", type=float, default=80.0, help="per device (1e9 B)")
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="dense bf16 peak per device (default: train.peak_tflops, else 989 = H100)",
    )
    parser.add_argument(
        "--device",
        choices=("gpu", "cpu"),
        default="gpu",
        help="cpu: fp32 and a measured process baseline instead of the CUDA runtime",
    )
    parser.add_argument(
        "--fs-bandwidth-gbs",
        type=float,
        default=DEFAULT_FS_BANDWIDTH_GBS,
        help="aggregate write bandwidth of the checkpoint file system in GB/s (1e9 B/s); "
        f"an assumption (default {DEFAULT_FS_BANDWIDTH_GBS:g}): replace it with your site's figure",
    )
    parser.add_argument(
        "--stop-grace-s",
        type=float,
        default=None,
        help="seconds SLURM gives a graceful stop (the N of --signal=B:USR1@N, or the "
        "partition's preemption GraceTime); exit 2 when one step plus one save does not fit",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--print",
        dest="print_field",
        choices=("run_dir", "run_name", "remaining_steps", "tp", "final_eval"),
        help="print one value and exit: the absolute run.dir, the run name, the steps left after "
        "the run's latest checkpoint, parallel.tp, or the final table's file when the run is "
        "complete and the table is missing (else an empty line)",
    )


def _gb(x: float) -> str:
    return f"{x / 1e9:7.2f} GB"


def _size(x: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x / 1e3:.3g} kB"


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.2g} s" if s < 10 else f"{s:.0f} s"
    return f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _weights_part(weights: int) -> str:
    """The periodic save's weights copy (ZeRO-3 only; ZeRO 0-2 keep it for the last save)."""
    return f"weights copy {_size(weights)}, " if weights else ""


def _checkpoint_lines(plan) -> list[str]:
    """One checkpoint's size and save time (model: megadyt/planning/checkpoint.py)."""
    c = plan.checkpoint
    bw = f"{c.fs_bandwidth_gbs:g} GB/s"
    return [
        f"checkpoint   {_size(c.total)} per save (model {_size(c.model)}, optimizer "
        f"{_size(c.optimizer)}, {_weights_part(c.weights)}RNG {_size(c.rng)}); "
        f"{_duration(c.write_s)} at {bw}",
        f"             + {_duration(c.hash_s)} manifest hashing (read back at {bw}, BLAKE3 "
        f"{HASH_GBS:g} GB/s per rank); every {c.save_interval:,} steps: "
        f"+{100 * c.overhead:.1f}% training time",
    ] + (
        [f"             the last save adds a weights copy of {_size(c.final_weights)}"]
        if c.final_weights
        else []
    )


def _eval_line(plan, cfg) -> str:
    """`megadyt eval`'s memory per device at TP=1 and the training TP, and what to use."""
    e = plan.evaluation
    sizes = ", ".join(f"TP={tp} {gb:.1f} GB" for tp, gb in e["memory_gb"].items())
    tp = e["smallest_tp"]
    verdict = (
        f"evaluate with --tp {tp}"
        if tp
        else "does not fit: lower --batch-size, or train with a larger TP"
    )
    batch = f"batch {e['batch_size']} x {cfg.model.seq_length}"
    return f"eval         {sizes} per device ({batch}); {verdict}"


def _zero_shot_lines(plan, cfg) -> list[str]:
    """What one periodic evaluation and the final table cost (model: planning/eval_cost.py)."""
    t, lines = cfg.train, []
    specs = {"periodic": t.zero_shot_tasks, "final": t.final_zero_shot_tasks}
    for kind, cost in plan.zero_shot.items():
        docs = "all docs" if cost.limit is None else f"{cost.limit} docs each"
        when = f"every {t.zero_shot_interval:,} steps" if kind == "periodic" else "at the end"
        share = ""
        if kind == "periodic":
            count = t.steps // t.zero_shot_interval + (t.steps % t.zero_shot_interval > 0)
            extra = 100 * count * cost.seconds / 3600 / plan.train_time_h
            share = f"; {count} of them: +{extra:.2f}% training time"
        lines.append(
            f"{kind:<9}{', '.join(specs[kind])} ({docs}, {when}): {cost.requests:,} requests, "
            f"{cost.tokens / 1e6:.1f}M tokens, >= {_duration(cost.seconds)} on TP {plan.tp}{share}"
            + (f" (no estimate for {', '.join(cost.unknown)})" if cost.unknown else "")
        )
    return [("zero-shot    " if i == 0 else "             ") + line for i, line in enumerate(lines)]


def _zero_shot_costs(cfg, plan) -> dict:
    from megadyt.evaluation.harness import expand_tasks
    from megadyt.planning.eval_cost import zero_shot_cost

    t, costs = cfg.train, {}
    for kind, tasks, limit in (
        ("periodic", t.zero_shot_tasks, t.zero_shot_limit),
        ("final", t.final_zero_shot_tasks, t.final_zero_shot_limit),
    ):
        if tasks:
            names = expand_tasks(tasks)
            costs[kind] = zero_shot_cost(cfg, names, limit, plan.peak_tflops, plan.mfu)
    return costs


def _report(plan, cfg) -> str:
    m = plan.memory
    s = plan.settings
    lines = [
        f"model        {cfg.model.name} ({cfg.model.norm}), {plan.params_total:,} parameters",
        f"cluster      {plan.nodes} node(s) x {plan.gpus_per_node} = {plan.world_size} ranks "
        f"({plan.device}, {plan.device_memory_gb:g} GB each)",
        f"layout       TP {plan.tp} x DP {plan.dp}, sp {str(s['sp']).lower()}, ZeRO "
        f"{s['zero_stage']}{' + optimizer offload' if s['offload_optimizer'] else ''}, "
        f"recompute {s['recompute']}, {s['precision']}",
        f"batch        {plan.global_batch_sequences} sequences = {plan.global_batch_tokens:,} "
        f"tokens/step; micro-batch {plan.micro_batch_size} x {plan.grad_accumulation} "
        "accumulation",
        f"tokens       {plan.steps:,} steps x {plan.global_batch_tokens:,} = "
        f"{plan.train_tokens / 1e9:,.1f}B tokens (200B tokens = {plan.steps_for_200b:,} steps)",
        f"memory/rank  ({plan.params_per_rank:,} parameters on each rank)",
        f"  weights      {_gb(m.weights)}",
        f"  grads        {_gb(m.grads)}",
        f"  optimizer    {_gb(m.optimizer)}"
        + (f"   (+{_gb(m.optimizer_cpu).strip()} in host memory)" if m.optimizer_cpu else ""),
        f"  activations  {_gb(m.activations)}   (recompute none {_gb(m.activations_none).strip()}"
        f", selective {_gb(m.activations_selective).strip()}"
        f", full {_gb(m.activations_full).strip()})",
        f"  overhead     {_gb(m.overhead)}",
        f"  total        {_gb(m.total)}   of {plan.device_memory_gb:g} GB: "
        + ("fits" if plan.fits else "DOES NOT FIT"),
        f"compute      {plan.model_flops_per_step:.3e} model FLOPs/step; at MFU "
        f"{plan.mfu:g} of {plan.peak_tflops:g} TFLOP/s: {plan.step_time_s:.2f} s/step, "
        f"{plan.train_time_h:,.1f} h for {plan.steps:,} steps",
        *_checkpoint_lines(plan),
        _eval_line(plan, cfg),
        *_zero_shot_lines(plan, cfg),
        f"stop         {_duration(plan.stop_s)} for a graceful stop (finish the step, then save)"
        + (
            f"; grace {_duration(plan.stop_grace_s)}: "
            + ("fits" if plan.stop_s <= plan.stop_grace_s else "DOES NOT FIT")
            if plan.stop_grace_s
            else ""
        ),
    ]
    return "\n".join(lines)


def _printed_value(cfg, field: str) -> str:
    """One value for the launch scripts, answered before torch is imported (a login node)."""
    run_dir, t = RunDir(cfg.run.dir), cfg.train
    if field == "run_dir":
        return str(run_dir.root.resolve())
    if field == "run_name":
        return cfg.run.name or run_dir.root.name
    if field == "remaining_steps":
        return str(run_dir.remaining_steps(t.steps))
    if field == "tp":
        return str(cfg.parallel.tp)
    missing = run_dir.missing_final_table(t.steps, t.final_zero_shot_tasks)
    return str(missing.resolve()) if missing else ""


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.print_field is not None:
        print(_printed_value(cfg, args.print_field))
        return 0
    from megadyt.planning.plan import (
        DoesNotFit,
        check_stop_grace,
        format_change,
        make_plan,
        suggest,
    )

    if args.nodes is None or args.gpus_per_node is None:
        raise MegadytError("megadyt plan needs --nodes N and --gpus-per-node G")
    kwargs = dict(
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        gpu_memory_gb=args.gpu_memory_gb,
        mfu=args.mfu,
        peak_tflops=args.peak_tflops,
        device=args.device,
        fs_bandwidth_gbs=args.fs_bandwidth_gbs,
    )
    plan = make_plan(cfg, **kwargs)
    plan.zero_shot = _zero_shot_costs(cfg, plan)
    plan.stop_grace_s = args.stop_grace_s
    if not plan.fits:
        change = suggest(cfg, **kwargs)
        plan.suggestion = format_change(change) if change else None
    if args.json:
        print(json.dumps(plan.as_dict(), indent=2))
    else:
        print(_report(plan, cfg))
    if not plan.fits:
        need = (
            f"needs {plan.memory.total / 1e9:.1f} GB per rank, {args.gpu_memory_gb:g} GB available"
        )
        hint = (
            f"; smallest change that fits: {plan.suggestion}"
            if plan.suggestion
            else "; no layout change fits: use more nodes or a smaller model"
        )
        raise DoesNotFit(f"{cfg.model.name} does not fit: {need}{hint}")
    if args.stop_grace_s is not None:
        check_stop_grace(plan, args.stop_grace_s)
    return 0
