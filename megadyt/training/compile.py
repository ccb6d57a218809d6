"""Compiled transformer layers (`train.compile`): torch.compile of each megatron-core layer.

Why each layer, not the whole model: every layer runs the same code, so Dynamo traces it once
and the other layers reuse the graph; the embedding, the loss and DeepSpeed's engine stay
eager. Inside the graph the norms (megadyt.norms.dispatch) and RoPE (megadyt.model.rope) take
their plain formulas, so Inductor fuses the residual adds, DyT/Derf or RMSNorm, SwiGLU and the
rotary embedding into a few kernels around the matmuls.

Why the layer's `forward` rather than the module call: the layer's own hooks stay outside the
graph, and parameters and state dict keys are unchanged (no `_orig_mod.` wrapper), so
checkpoints move freely between compiled and eager runs. Under ZeRO-3, DeepSpeed gathers each
submodule's parameters in that submodule's hooks, which torch.compile runs eagerly between
graphs: a layer then compiles into several graphs (correct, fewer fusions; the first-step
report counts the breaks). DeepSpeed's "leaf module" setting, which would gather a whole
layer's parameters at once, failed in backward with megatron-core's layers (eager too).

Compiling happens lazily on the first step (and again for each new variant: gradients off under
full recompute, the saturation monitor's log steps); `LayerCompilation.first_report` measures the
first step's share from Dynamo's own timers. Evaluation runs the layers eagerly (`eager()`):
its shapes and modes would each cost another compile for a few forward passes.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
from megatron.core.transformer.transformer_layer import TransformerLayer

from megadyt.config.schema import Config


def compile_enabled(cfg: Config) -> bool:
    """train.compile resolved: "auto" compiles on CUDA only (on CPU it is opt-in until measured
    faster there; see docs/performance.md)."""
    if cfg.train.compile == "auto":
        return torch.cuda.is_available()
    return cfg.train.compile == "on"


def transformer_layers(model: torch.nn.Module) -> list[TransformerLayer]:
    return [m for m in model.modules() if isinstance(m, TransformerLayer)]


def _dynamo_compile_seconds() -> float | None:
    """Seconds Dynamo and Inductor have spent compiling in this process (forward and backward
    graphs), or None where this torch does not expose the figure."""
    spent = getattr(torch._dynamo.utils, "calculate_time_spent", None)
    if spent is None:
        return None
    return float(spent().get("total_wall_time", 0.0))


def _graph_breaks() -> int:
    return sum(torch._dynamo.utils.counters["graph_break"].values())


@dataclass
class CompileReport:
    layers: int
    seconds: float  # compile time in the first step (its whole wall time where not exposed)
    graph_breaks: int  # inside the compiled layers during the first step; 0 is the target

    def line(self) -> str:
        breaks = "" if not self.graph_breaks else f" ({self.graph_breaks} graph breaks)"
        return f"compiled {self.layers} layers in {self.seconds:.1f} s{breaks}"

    def scalars(self) -> dict[str, float]:
        return {
            "compile/layers": float(self.layers),
            "compile/seconds": self.seconds,
            "compile/graph_breaks": float(self.graph_breaks),
        }


class LayerCompilation:
    """The compiled layers of one model: `mark()` before the first step, `first_report()` after
    it says what that step spent compiling (once; None afterwards)."""

    def __init__(self, layers: list[TransformerLayer], clock=time.perf_counter) -> None:
        self.layers = len(layers)
        self.clock = clock
        self._mark: tuple[float | None, int, float] | None = None

    def mark(self) -> None:
        self._mark = (_dynamo_compile_seconds(), _graph_breaks(), self.clock())

    def first_report(self) -> CompileReport | None:
        if self._mark is None:
            return None
        (c0, b0, t0), self._mark = self._mark, None
        c1 = _dynamo_compile_seconds()
        seconds = c1 - c0 if c0 is not None and c1 is not None else self.clock() - t0
        return CompileReport(self.layers, seconds, _graph_breaks() - b0)


def compile_layers(cfg: Config, model: torch.nn.Module) -> LayerCompilation | None:
    """Compile every TransformerLayer of `model` in place when train.compile asks for it (call
    before the DeepSpeed engine wraps the model); None when compiling is off."""
    if not compile_enabled(cfg):
        return None
    layers = transformer_layers(model)
    for layer in layers:
        # dynamic=False: a run's shapes are fixed; recompiling for a new shape is rarer than
        # the cost symbolic shapes add to every kernel
        layer.forward = torch.compile(layer.forward, dynamic=False)
    return LayerCompilation(layers)


def eager() -> contextlib.AbstractContextManager:
    """Run compiled code eagerly inside this context (evaluation; nothing compiles)."""
    return torch.compiler.set_stance("force_eager")


def explain_layer(model: torch.nn.Module, batch: int = 2) -> tuple[int, list[str]]:
    """(graphs, graph-break reasons) of torch.compile tracing `model`'s first transformer layer,
    forward, on a random input of the model's shape: (1, []) is a layer with no graph break.
    Traces only (torch._dynamo.explain): no code is generated, so it takes seconds."""
    layer = transformer_layers(model)[0]
    config = layer.config
    seq = model.max_sequence_length
    local_seq = seq // config.tensor_model_parallel_size if config.sequence_parallel else seq
    device = next(model.parameters()).device
    x = torch.randn(local_seq, batch, config.hidden_size, device=device, requires_grad=True)
    rope = model.rotary_pos_emb(seq)
    forward = getattr(layer.forward, "_torchdynamo_orig_callable", layer.forward)

    def run(hidden):
        return forward(hidden, attention_mask=None, rotary_pos_emb=rope)

    explained = torch._dynamo.explain(run)(x)
    return explained.graph_count, [reason.reason for reason in explained.break_reasons]
