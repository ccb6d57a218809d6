"""Hugging Face baseline for train_throughput.py: what megadyt's speed should be compared with.

A plain `transformers` LlamaForCausalLM of the shape a megadyt config describes (RMSNorm, SDPA
attention), trained the way a user would write it: torch AdamW with the recipe's lr schedule,
betas, eps and weight decay (fused/foreach left at torch's default), gradient accumulation,
gradient clipping, torch DDP over gloo (NCCL on CUDA) for more than one process, fp32 on CPU and
bf16 autocast on CUDA. It is timed as `megadyt train` times itself: wall time of each optimizer
step including fetching the batch; the benchmark drops the first step and takes the median.
Tokens are random ids of the same shape (throughput does not depend on their values).
On CUDA each step's end is taken after torch.cuda.synchronize(), and the output records
torch.cuda.max_memory_allocated (GiB, like megadyt's perf/memory_gb); on CPU the peak RSS.
`--compile` compiles each decoder layer with torch.compile, as megadyt's train.compile does
(and torchtitan): the same fusions, a compile time of one layer rather than of the model.

    python benchmarks/hf_baseline.py --config configs/tiny/rmsnorm.yaml [--set k=v] --output x.json
    python -m torch.distributed.run --nproc_per_node=2 benchmarks/hf_baseline.py ...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from megadyt.config import load_config  # noqa: E402
from megadyt.config.schema import Config, ModelConfig  # noqa: E402
from megadyt.interop import hf_config  # noqa: E402
from megadyt.model.counting import count_parameters  # noqa: E402
from megadyt.model.flops import flops_per_token  # noqa: E402
from megadyt.training.metrics import memory_gb, peak_tflops  # noqa: E402
from megadyt.training.optim import lr_at  # noqa: E402

ATTENTION = "sdpa"


def llama_config(m: ModelConfig):
    """The exported model's LlamaConfig (megadyt.interop), set up for training here."""
    return hf_config.llama_config(m, use_cache=False, attn_implementation=ATTENTION)


def compile_decoder_layers(model) -> int:
    """torch.compile of each decoder layer's forward, in place; the number of layers."""
    layers = model.model.layers
    for layer in layers:
        layer.forward = torch.compile(layer.forward, dynamic=False)
    return len(layers)


def train(cfg: Config, steps: int, compiled: bool = False) -> dict:
    """Train `steps` optimizer steps; returns per-step seconds and facts for the report."""
    from transformers import LlamaForCausalLM

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    on_cuda = torch.cuda.is_available()
    if on_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dev = torch.device("cuda", torch.cuda.current_device()) if on_cuda else torch.device("cpu")
    if world > 1:
        dist.init_process_group("nccl" if on_cuda else "gloo")
    t, m = cfg.train, cfg.model
    bf16 = on_cuda and t.precision != "fp32"
    torch.manual_seed(t.seed)
    model = LlamaForCausalLM(llama_config(m)).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    if compiled:
        compile_decoder_layers(model)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=t.lr,
        betas=(t.adam_beta1, t.adam_beta2),
        eps=t.adam_eps,
        weight_decay=t.weight_decay,
    )
    peak = peak_tflops(cfg)  # measured like megadyt's trainer does, before training
    gas = t.global_batch_size // (t.micro_batch_size * world)
    gen = torch.Generator().manual_seed(t.seed)
    data = torch.randint(
        0, m.vocab_size, (steps * t.global_batch_size, m.seq_length), generator=gen
    )
    seconds, losses = [], []
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for step in range(steps):
        start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, t)
        step_loss = torch.zeros((), device=dev)
        for micro in range(gas):
            first = step * t.global_batch_size + (micro * world + rank) * t.micro_batch_size
            batch = data[first : first + t.micro_batch_size].to(dev)
            sync = world == 1 or micro == gas - 1
            with (
                contextlib.nullcontext() if sync else model.no_sync(),
                torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16),
            ):
                loss = model(input_ids=batch, labels=batch).loss / gas
                loss.backward()
            step_loss += loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss.item())  # the one host sync a logging loop has
        if on_cuda:
            torch.cuda.synchronize()  # .item() waits for the loss only; the update may still run
        seconds.append(time.perf_counter() - start)
    if world > 1:
        dist.destroy_process_group()
    return {
        "rank": rank,
        "nproc": world,
        "seconds": seconds,
        "losses": losses,
        "tokens_per_step": t.global_batch_size * m.seq_length,
        "flops_per_token": flops_per_token(cfg.model),
        "peak_tflops": peak,
        "threads": torch.get_num_threads(),
        "params": n_params,
        "params_megadyt_rmsnorm": count_parameters(m).total,
        "attention": ATTENTION,
        "dtype": "bf16 autocast" if bf16 else "fp32",
        "compiled": compiled,
        "gradient_accumulation": gas,
        "max_memory_gib": memory_gb(),  # as megadyt logs perf/memory_gb
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--output", required=True)
    parser.add_argument("--compile", action="store_true", help="torch.compile each layer")
    args = parser.parse_args()
    cfg = load_config(args.config, [*args.overrides, "model.norm=rmsnorm"])
    result = train(cfg, args.steps, args.compile)
    if result["rank"] == 0:
        import transformers

        result["transformers"] = transformers.__version__
        Path(args.output).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
