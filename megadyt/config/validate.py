"""Cross-field checks of a Config: impossible layouts fail here, once, with the key named.

Single-value checks (a count that must be positive, a stage from a fixed set) stop at the first
bad value. The layout checks (divisibility by heads, TP, world size, batch) are all collected and
reported in one error, so a user fixes a layout in one rerun instead of one problem per rerun.
"""

from __future__ import annotations

from typing import NamedTuple

from megadyt.config.schema import Config, ModelConfig, ParallelConfig, TrainConfig
from megadyt.errors import ConfigError


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


class Problem(NamedTuple):
    """One violated layout rule: what is wrong and, where the rule does not say it, the fix."""

    what: str
    fix: str = ""

    def alone(self) -> str:
        """The message when this is the only problem (unchanged from the one-at-a-time checks)."""
        return f"{self.what}; {self.fix}" if self.fix else self.what

    def listed(self) -> str:
        """Its entry in a '; '-joined list (the fix in parentheses: not mistaken for an entry)."""
        return f"{self.what} ({self.fix})" if self.fix else self.what


def raise_problems(problems: list[Problem]) -> None:
    """Raise one one-line ConfigError naming every problem (none: return)."""
    if len(problems) == 1:
        raise ConfigError(problems[0].alone())
    if problems:
        listed = "; ".join(problem.listed() for problem in problems)
        raise ConfigError(f"{len(problems)} layout problems: {listed}")


def _divisible(value: int, divisor: int, message: str, fix: str = "") -> list[Problem]:
    return [] if value % divisor == 0 else [Problem(message, fix)]


def world_size_problems(world_size: int, tp: int) -> list[Problem]:
    """The launch must hold whole tensor-parallel groups."""
    return _divisible(
        world_size,
        tp,
        f"world size {world_size} is not divisible by parallel.tp ({tp})",
        "launch a multiple of tp processes",
    )


def check_world_size(world_size: int, tp: int) -> None:
    """Raise if `world_size` ranks cannot hold whole TP groups (config validation and
    `init_distributed` both ask here)."""
    raise_problems(world_size_problems(world_size, tp))


def check_data_weights(prefixes: list[str], weights: list[float] | None) -> None:
    """One blend weight per dataset prefix, or none (config validation and `build_datasets`)."""
    _require(
        weights is None or len(weights) == len(prefixes),
        f"data.weights has {len(weights or [])} entries but data.prefixes has {len(prefixes)}",
    )


def _check_model_values(m: ModelConfig) -> None:
    for key in (
        "num_layers",
        "hidden_size",
        "ffn_hidden_size",
        "num_attention_heads",
        "vocab_size",
        "seq_length",
    ):
        _require(getattr(m, key) > 0, f"model.{key} must be positive, got {getattr(m, key)}")
    _require(m.kv_heads > 0, f"model.num_query_groups must be positive, got {m.kv_heads}")
    alpha_keys = ["alpha0_attention", "alpha0_ffn", "alpha0_final", "alpha_calibration_final"]
    for key in alpha_keys:
        value = getattr(m, key)
        _require(value is None or value > 0, f"model.{key} must be positive, got {value}")
    for key in ("alpha_calibration_attention", "alpha_calibration_other"):
        value = getattr(m, key)
        _require(
            value == "auto" or value > 0, f"model.{key} must be positive or 'auto', got {value}"
        )
    _require(
        m.init_std == "auto" or m.init_std > 0,
        f"model.init_std must be positive or 'auto', got {m.init_std}",
    )


def _check_parallel_values(p: ParallelConfig) -> None:
    _require(p.tp >= 1, f"parallel.tp must be >= 1, got {p.tp}")
    _require(
        p.zero_stage in (0, 1, 2, 3),
        f"parallel.zero_stage must be 0, 1, 2 or 3, got {p.zero_stage}",
    )
    _require(
        not p.offload_optimizer or p.zero_stage in (2, 3),
        f"parallel.offload_optimizer needs parallel.zero_stage 2 or 3, got {p.zero_stage}",
    )
    _require(
        p.timeout_minutes > 0,
        f"parallel.timeout_minutes must be positive, got {p.timeout_minutes}",
    )


def _check_train_values(t: TrainConfig) -> None:
    for key in (
        "steps",
        "micro_batch_size",
        "global_batch_size",
        "log_interval",
        "eval_interval",
        "save_interval",
        "max_bad_steps",
        "spike_window",
        "spike_min_history",
        "saturation_patience",
    ):
        _require(getattr(t, key) > 0, f"train.{key} must be positive, got {getattr(t, key)}")
    _require(t.lr > 0, f"train.lr must be positive, got {t.lr}")
    _require(
        t.norm_scalar_lr_scale >= 0,
        f"train.norm_scalar_lr_scale must be >= 0, got {t.norm_scalar_lr_scale}",
    )
    _require(
        t.spike_threshold_std > 0,
        f"train.spike_threshold_std must be positive, got {t.spike_threshold_std}",
    )
    _require(
        0 < t.spike_lr_factor <= 1,
        f"train.spike_lr_factor must be in (0, 1], got {t.spike_lr_factor}",
    )
    _require(t.max_rollbacks >= 0, f"train.max_rollbacks must be >= 0, got {t.max_rollbacks}")
    _require(
        t.regime_diagnostic_step is None or t.regime_diagnostic_step >= 0,
        f"train.regime_diagnostic_step must be >= 0 (0: off), got {t.regime_diagnostic_step}",
    )
    _require(
        t.spike_min_history <= t.spike_window,
        f"train.spike_min_history ({t.spike_min_history}) must not exceed train.spike_window "
        f"({t.spike_window})",
    )
    _require(
        t.zero_shot_interval > 0,
        f"train.zero_shot_interval must be positive, got {t.zero_shot_interval}",
    )
    for key in ("zero_shot_limit", "final_zero_shot_limit"):
        value = getattr(t, key)
        _require(value is None or value > 0, f"train.{key} must be positive or null, got {value}")
    _require(
        0 <= t.min_lr_ratio <= 1, f"train.min_lr_ratio must be in [0, 1], got {t.min_lr_ratio}"
    )
    _require(
        t.warmup_steps is None or 0 <= t.warmup_steps <= t.steps,
        f"train.warmup_steps must be between 0 and train.steps ({t.steps}), got {t.warmup_steps}",
    )
    _require(
        t.stop_at_step is None or t.stop_at_step > 0,
        f"train.stop_at_step must be positive, got {t.stop_at_step}",
    )
    for key in ("keep_checkpoints", "keep_every"):
        value = getattr(t, key)
        _require(value is None or value >= 1, f"train.{key} must be >= 1 or null, got {value}")


def _head_size_problems(m: ModelConfig) -> list[Problem]:
    """RoPE rotates channel pairs: megatron-core's rotary embedding needs an even head size."""
    head = m.hidden_size // m.num_attention_heads
    if head % 2 == 0:
        return []
    pair = 2 * m.num_attention_heads
    lower = m.hidden_size - m.hidden_size % pair
    sizes = " or ".join(str(s) for s in (lower, lower + pair) if s > 0)
    return [
        Problem(
            f"model.hidden_size / model.num_attention_heads ({m.hidden_size} / "
            f"{m.num_attention_heads}) is a head size of {head}, which rotary embeddings need "
            "even",
            f"e.g. model.hidden_size={sizes}",
        )
    ]


def _head_problems(m: ModelConfig) -> list[Problem]:
    whole_heads = _divisible(
        m.hidden_size,
        m.num_attention_heads,
        f"model.hidden_size ({m.hidden_size}) must be divisible by model.num_attention_heads "
        f"({m.num_attention_heads})",
    )
    whole_groups = _divisible(
        m.num_attention_heads,
        m.kv_heads,
        f"model.num_attention_heads ({m.num_attention_heads}) must be divisible by "
        f"model.num_query_groups ({m.kv_heads})",
    )
    return (whole_heads or _head_size_problems(m)) + whole_groups  # a size needs whole heads


def _tp_problems(m: ModelConfig, p: ParallelConfig) -> list[Problem]:
    problems = []
    if p.sp and p.tp == 1:
        problems.append(Problem("parallel.sp=true needs parallel.tp > 1 (SP splits over TP)"))
    for key, value in (
        ("model.num_attention_heads", m.num_attention_heads),
        ("model.num_query_groups", m.kv_heads),
        ("model.ffn_hidden_size", m.ffn_hidden_size),
        ("model.vocab_size", m.vocab_size),
    ):
        problems += _divisible(
            value, p.tp, f"{key} ({value}) must be divisible by parallel.tp ({p.tp})"
        )
    if p.sp:
        problems += _divisible(
            m.seq_length,
            p.tp,
            f"model.seq_length ({m.seq_length}) must be divisible by parallel.tp ({p.tp}) "
            "under sequence parallelism",
        )
    return problems


def _batch_problems(t: TrainConfig, tp: int, world_size: int | None) -> list[Problem]:
    problems = _divisible(
        t.global_batch_size,
        t.micro_batch_size,
        f"train.global_batch_size ({t.global_batch_size}) must be a multiple of "
        f"train.micro_batch_size ({t.micro_batch_size})",
    )
    if world_size is None:
        return problems
    world = world_size_problems(world_size, tp)
    if world or problems:
        return problems + world  # no data-parallel size to check (or already not a multiple)
    dp = world_size // tp
    return _divisible(
        t.global_batch_size,
        t.micro_batch_size * dp,
        f"train.global_batch_size ({t.global_batch_size}) must be a multiple of "
        f"train.micro_batch_size × data-parallel size ({t.micro_batch_size} × {dp})",
    )


def layout_problems(cfg: Config, world_size: int | None = None) -> list[Problem]:
    """Every violated divisibility rule of `cfg` (on `world_size` ranks when given); assumes the
    single-value checks passed (no zero or negative sizes)."""
    m, p, t = cfg.model, cfg.parallel, cfg.train
    return _head_problems(m) + _tp_problems(m, p) + _batch_problems(t, p.tp, world_size)


def validate_config(cfg: Config, world_size: int | None = None) -> Config:
    """Check `cfg` (and its layout on `world_size` ranks when given); return it unchanged."""
    _check_model_values(cfg.model)
    _check_parallel_values(cfg.parallel)
    _check_train_values(cfg.train)
    raise_problems(layout_problems(cfg, world_size))
    _require(len(cfg.data.prefixes) > 0, "data.prefixes must name at least one dataset")
    check_data_weights(cfg.data.prefixes, cfg.data.weights)
    return cfg
