"""The one typed config tree of megadyt.

Every command that takes `--config` loads a YAML file into `Config`, applies `--set` overrides,
and checks the result once at start-up (`megadyt.config.validate`); the rest of the code trusts
the object. Precedence: `--set` > YAML file > the defaults written here. Each field's comment
says what it means.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

# The names of megadyt.norms.registry (it checks at import that the two agree).
NormName = Literal["rmsnorm", "dyt", "derf"]
RecomputeName = Literal["none", "selective", "full"]
PrecisionName = Literal["auto", "bf16", "fp32"]
NormImplName = Literal["auto", "reference", "compiled", "triton"]
AttentionImplName = Literal["sdpa", "local"]
SpikeActionName = Literal["off", "log", "skip", "rollback"]
CompileName = Literal["auto", "on", "off"]


@dataclass
class ModelConfig:
    name: str = "tiny"  # a label for logs and checkpoints
    norm: NormName = "dyt"  # which norm fills every norm slot (pre-attn, pre-FFN, final)
    num_layers: int = 2
    hidden_size: int = 128
    ffn_hidden_size: int = 352  # SwiGLU inner width
    num_attention_heads: int = 4
    num_query_groups: int | None = None  # KV heads for GQA; None means one per attention head
    vocab_size: int = 4096  # must match (or exceed) the tokenizer's vocabulary
    seq_length: int = 128
    rotary_base: int = 10000
    norm_eps: float = 1e-5  # RMSNorm only
    # Std of the normal init of every weight matrix. "auto" = 1/sqrt(hidden_size): 0.088 at
    # width 128, 0.0156 at 4096. Small DyT/Derf models need it (docs/dyt-at-small-scale.md);
    # the LLaMA presets pin the paper's 0.02.
    init_std: float | Literal["auto"] = "auto"
    # DyT/Derf. None means "chosen by the width rule" (megadyt.norms.alpha); a number overrides.
    alpha0_attention: float | None = None
    alpha0_ffn: float | None = None
    alpha0_final: float | None = None
    # How DyT/Derf set α at the start of a fresh run. "rule": α₀ from the width rule (or the
    # alpha0_* overrides). "calibrate": one forward pass over the first micro-batch before
    # training sets each norm's α = c / std(its input), in forward order, with c =
    # alpha_calibration_attention for attention norms, alpha_calibration_other for FFN norms
    # and alpha_calibration_final (default: the same as other) for the final norm. "auto": the
    # run-length rule (megadyt.norms.alpha), 2 / 1 for runs planned below 2 tokens per
    # parameter and 1 / 0.5 from there on. A resumed run keeps its checkpointed α. RMSNorm
    # ignores them.
    alpha_init: Literal["rule", "calibrate"] = "calibrate"
    alpha_calibration_attention: float | Literal["auto"] = "auto"
    alpha_calibration_other: float | Literal["auto"] = "auto"
    alpha_calibration_final: float | None = None
    derf_shift_init: float = 0.0  # s0 of Derf (the paper: 0)
    norm_bias: bool = False  # β in DyT/Derf; the paper's LLaMA code has none
    # Learnable scalar multiplying the token embedding (init sqrt(hidden_size)).
    # "auto": on for dyt/derf, off for rmsnorm, as in the paper.
    embedding_scale: Literal["auto", "on", "off"] = "auto"
    # How DyT/Derf are computed: "auto" takes the fastest correct path for the device and dtype
    # (Triton on CUDA, compiled on CPU, else the plain formula). Not part of the model's identity:
    # checkpoints move freely between implementations.
    norm_impl: NormImplName = "auto"
    # Core attention: "sdpa" runs causal self-attention on torch's scaled_dot_product_attention
    # (FlashAttention on CUDA, no [s, s] scores kept); "local" is megatron-core's unfused class.
    # Not part of the model's identity either.
    attention_impl: AttentionImplName = "sdpa"
    # The training/validation loss: "on" runs the output layer and the cross entropy in chunks
    # of tokens (megadyt.model.loss), so the whole logits never exist; "off" is megatron-core's
    # path (all logits, then its vocab-parallel cross entropy); "auto" chunks where the logits
    # would exceed one chunk (64 MiB of fp32 or more). Same loss and gradients either way; what
    # needs logits (lm-eval) always gets them. Not part of the model's identity either.
    fused_loss: Literal["auto", "on", "off"] = "auto"

    @property
    def kv_heads(self) -> int:
        return self.num_query_groups or self.num_attention_heads

    @property
    def resolved_init_std(self) -> float:
        """init_std as a number ("auto" resolved to 1/sqrt(hidden_size))."""
        if self.init_std == "auto":
            return 1.0 / math.sqrt(self.hidden_size)
        return float(self.init_std)


@dataclass
class ParallelConfig:
    tp: int = 1  # tensor-parallel size (megatron-core)
    sp: bool = False  # sequence parallelism (needs tp > 1)
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0..3 over the data-parallel group
    offload_optimizer: bool = False  # ZeRO 2/3: keep optimizer states in CPU memory
    recompute: RecomputeName = "none"  # megatron-core activation checkpointing
    backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: nccl with CUDA, gloo without
    # Collective timeout: a rank that does not reach a collective within it fails the job,
    # and the message names the rank that did not answer.
    timeout_minutes: float = 30


@dataclass
class TrainConfig:
    steps: int = 100
    seed: int = 2023
    micro_batch_size: int = 4
    global_batch_size: int = 8  # sequences per optimizer step (micro × DP × accumulation)
    lr: float = 1e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to this fraction of the peak
    warmup_steps: int | None = None  # None: min(2000, steps // 20), the paper's rule
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    # Whether the norm parameters (γ, β, α, s) and the embedding scalar are weight-decayed.
    # False (the default since 2026-12-07) decays the weight matrices only, as Megatron-LM and
    # most codebases do; it narrowed tiny DyT's gap to its RMSNorm twin at 3 tokens/parameter
    # (docs/regime.md#weight-decay-on-the-norms-and-the-scalar). True decays every parameter,
    # megadyt's default before (the papers give weight decay 0.1 and name no exceptions).
    decay_norm_params: bool = False
    # Whether the squashing norms' scalars α and s are weight-decayed when decay_norm_params is.
    # Decay pulls α towards 0 by lr·wd·α a step, about half of α's decline over a run; turning
    # it off made tiny DyT worse at 1 token/parameter (docs/regime.md). RMSNorm has no such
    # scalar, so the twins still differ only in the norm.
    decay_norm_scalars: bool = True
    # The squashing norms' α and s learn at this fraction of the LR (decay follows, as AdamW
    # multiplies it by the LR). Adam moves a scalar as far a step as any weight, yet α scales
    # its whole layer's input; 1.0 = the paper.
    norm_scalar_lr_scale: float = 1.0
    precision: PrecisionName = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    # torch.compile of every transformer layer (megadyt.training.compile): Inductor fuses the
    # norm, residual adds, SwiGLU and RoPE around the matmuls. "auto": on with CUDA, off on CPU
    # (there it is 1.01-1.24x faster per step, but its compile time outweighs that in the
    # minutes-long runs CPUs are for). Compiling takes 10 s or more in the first step; the log
    # reports it. Not part of the model's identity: a run may resume either way.
    compile: CompileName = "auto"
    log_interval: int = 1
    eval_interval: int = 50
    eval_iters: int = 4
    save_interval: int = 50
    # Stop cleanly (after a checkpoint) once this absolute step is done, e.g. to end a job
    # before its time limit; rerunning continues to train.steps. None: train to train.steps.
    # Not Megatron's periodic `exit_interval` (the old name here, still read as an alias).
    stop_at_step: int | None = None
    # Zero-shot evaluation with lm-eval: suites ("paper15", "offline") or task names. Every task
    # is resolved at start-up: one whose dataset is neither cached nor downloadable stops the run
    # before its first step. Rank 0 runs lm-eval; the ranks of its TP group (every rank under
    # ZeRO-3) run the same forwards, the others wait; training metrics pause meanwhile.
    # Periodic: every zero_shot_interval steps and at the final step, zero_shot_limit documents
    # per task (None: all); the scores go to TensorBoard and metrics.jsonl. Empty: off.
    zero_shot_tasks: list[str] = field(default_factory=list)
    zero_shot_interval: int = 1000
    zero_shot_limit: int | None = 100
    # The run's final table: once train.steps is trained and saved, these tasks on
    # final_zero_shot_limit documents each (None: all), written to RUN/eval/step_N-SET.json
    # (`megadyt compare` reads it). A stop request before it starts leaves it to the next start
    # or to the launch scripts (`megadyt eval --final`). Empty: none.
    final_zero_shot_tasks: list[str] = field(default_factory=list)
    final_zero_shot_limit: int | None = None
    max_bad_steps: int = 5  # consecutive non-finite (or skipped-spike) steps before stopping
    # Loss-spike guard. A micro-batch whose loss (mean over data-parallel ranks) exceeds the mean
    # of the last `spike_window` accepted losses by `spike_threshold_std` standard deviations is
    # a spike. "log" records it; "skip" also drops that micro-batch's gradient; "rollback"
    # reloads the last checkpoint, moves the data past the batches that led to the spike and
    # multiplies the LR by `spike_lr_factor` (the PaLM/OLMo remedy); "off" disables the guard.
    spike_action: SpikeActionName = "log"
    spike_threshold_std: float = 6.0
    spike_window: int = 128
    spike_min_history: int = 20  # accepted losses needed before spikes are judged
    spike_lr_factor: float = 1.0  # LR multiplier applied at each rollback (e.g. 0.5)
    max_rollbacks: int = 3  # rollbacks in one run before it stops and asks for a human
    # A failed checkpoint save (disk full, unwritable dir) never moves `latest`; then "stop"
    # ends the run with a clear message, "warn" logs it and keeps training.
    on_save_error: Literal["stop", "warn"] = "stop"
    # When `latest` fails its manifest check, resume from the newest earlier checkpoint that
    # verifies instead of stopping (`megadyt train --resume-fallback`).
    resume_fallback: bool = False
    # Checkpoint retention (`megadyt.training.checkpoint.retention`), after each published
    # checkpoint: keep the newest `keep_checkpoints` complete ones (None: keep all) plus, forever,
    # every one whose step is a multiple of `keep_every` (milestones; only used with
    # keep_checkpoints). `latest` and anything newer are never deleted; older partial dirs of
    # crashed saves are.
    keep_checkpoints: int | None = None
    keep_every: int | None = None
    peak_tflops: float | None = None  # per device, for MFU; None: a default for the device
    # Per-norm health at every log step, from one sampled micro-batch: input RMS, and for
    # DyT/Derf the fraction of saturated units (|αx+s| > 2) and the mean derivative of tanh/erf.
    saturation_monitor: bool = True
    # Warn once when the final norm stays > 90% saturated for this many log intervals in a row.
    saturation_patience: int = 5
    # The step of the regime diagnostic (megadyt.training.saturation): the mean saturated
    # fraction of the DyT/Derf norms, read against Verma (2026)'s finding that high saturation
    # early (49% vs 23%) comes with DyT helping (little data) rather than hurting (more data),
    # and the SwiGLU gate's saturation; one event line and one metrics.jsonl record. None:
    # min(500, steps // 10), Verma's step 500 unless the run is shorter than 5,000 steps, so
    # short runs are still read early; 0: off. Needs saturation_monitor.
    regime_diagnostic_step: int | None = None

    @property
    def resolved_regime_diagnostic_step(self) -> int | None:
        """The regime diagnostic's step (None when off)."""
        if self.regime_diagnostic_step is None:
            return min(500, max(1, self.steps // 10))
        return self.regime_diagnostic_step or None


@dataclass
class DataConfig:
    # Indexed dataset prefixes (PREFIX.bin/.idx) and their blend weights. The built-in
    # corpus is used when empty ("builtin:stdlib" is built on first use).
    prefixes: list[str] = field(default_factory=lambda: ["builtin:stdlib"])
    weights: list[float] | None = None
    split: str = "98,1,1"  # train/valid/test, megatron-core's split string
    tokenizer: str = "builtin:stdlib"  # a SentencePiece .model file, or the built-in one
    cache_dir: str = "data_cache"  # megatron-core's dataset index cache and built-in corpora
    # Seed of the validation samples' shuffle; None: train.seed. Pin it to score runs of
    # different seeds on the same validation samples (benchmarks/regime_ladder.py does).
    valid_seed: int | None = None
    num_workers: int = 0


@dataclass
class RunConfig:
    dir: str = "runs/tiny-dyt"
    name: str | None = None  # TensorBoard run label; None: the last part of `dir`


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def tokens_per_step(self) -> int:
        """Tokens one optimizer step trains on: the global batch of full sequences."""
        return self.train.global_batch_size * self.model.seq_length

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
