"""Cross-field checks of a Config: impossible layouts fail here, once, with the key named."""

from __future__ import annotations

from megadyt.config.schema import Config
from megadyt.errors import ConfigError


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def check_world_size(world_size: int, tp: int) -> None:
    """The launch must hold whole tensor-parallel groups (config validation and
    `init_distributed` both ask here)."""
    _require(
        world_size % tp == 0,
        f"world size {world_size} is not divisible by parallel.tp ({tp}); "
        "launch a multiple of tp processes",
    )


def check_data_weights(prefixes: list[str], weights: list[float] | None) -> None:
    """One blend weight per dataset prefix, or none (config validation and `build_datasets`)."""
    _require(
        weights is None or len(weights) == len(prefixes),
        f"data.weights has {len(weights or [])} entries but data.prefixes has {len(prefixes)}",
    )


def validate_config(cfg: Config, world_size: int | None = None) -> Config:
    """Check `cfg` (and its layout on `world_size` ranks when given); return it unchanged."""
    m, p, t, d = cfg.model, cfg.parallel, cfg.train, cfg.data
    for key in (
        "num_layers",
        "hidden_size",
        "ffn_hidden_size",
        "num_attention_heads",
        "vocab_size",
        "seq_length",
    ):
        _require(getattr(m, key) > 0, f"model.{key} must be positive, got {getattr(m, key)}")
    _require(
        m.hidden_size % m.num_attention_heads == 0,
        f"model.hidden_size ({m.hidden_size}) must be divisible by model.num_attention_heads "
        f"({m.num_attention_heads})",
    )
    _require(m.kv_heads > 0, f"model.num_query_groups must be positive, got {m.kv_heads}")
    _require(
        m.num_attention_heads % m.kv_heads == 0,
        f"model.num_attention_heads ({m.num_attention_heads}) must be divisible by "
        f"model.num_query_groups ({m.kv_heads})",
    )
    for key in ("alpha0_attention", "alpha0_ffn", "alpha0_final"):
        value = getattr(m, key)
        _require(value is None or value > 0, f"model.{key} must be positive, got {value}")
    for key in ("alpha_calibration_attention", "alpha_calibration_other"):
        value = getattr(m, key)
        _require(value > 0, f"model.{key} must be positive, got {value}")
    _require(
        m.init_std == "auto" or m.init_std > 0,
        f"model.init_std must be positive or 'auto', got {m.init_std}",
    )

    _require(p.tp >= 1, f"parallel.tp must be >= 1, got {p.tp}")
    _require(
        p.zero_stage in (0, 1, 2, 3),
        f"parallel.zero_stage must be 0, 1, 2 or 3, got {p.zero_stage}",
    )
    _require(not p.sp or p.tp > 1, "parallel.sp=true needs parallel.tp > 1 (SP splits over TP)")
    _require(
        not p.offload_optimizer or p.zero_stage in (2, 3),
        f"parallel.offload_optimizer needs parallel.zero_stage 2 or 3, got {p.zero_stage}",
    )
    for key, value in (
        ("model.num_attention_heads", m.num_attention_heads),
        ("model.num_query_groups", m.kv_heads),
        ("model.ffn_hidden_size", m.ffn_hidden_size),
        ("model.vocab_size", m.vocab_size),
    ):
        _require(value % p.tp == 0, f"{key} ({value}) must be divisible by parallel.tp ({p.tp})")
    if p.sp:
        _require(
            m.seq_length % p.tp == 0,
            f"model.seq_length ({m.seq_length}) must be divisible by parallel.tp ({p.tp}) "
            "under sequence parallelism",
        )

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
        t.spike_threshold_std > 0,
        f"train.spike_threshold_std must be positive, got {t.spike_threshold_std}",
    )
    _require(
        0 < t.spike_lr_factor <= 1,
        f"train.spike_lr_factor must be in (0, 1], got {t.spike_lr_factor}",
    )
    _require(t.max_rollbacks >= 0, f"train.max_rollbacks must be >= 0, got {t.max_rollbacks}")
    _require(
        t.spike_min_history <= t.spike_window,
        f"train.spike_min_history ({t.spike_min_history}) must not exceed train.spike_window "
        f"({t.spike_window})",
    )
    _require(
        p.timeout_minutes > 0,
        f"parallel.timeout_minutes must be positive, got {p.timeout_minutes}",
    )
    _require(
        t.zero_shot_interval > 0,
        f"train.zero_shot_interval must be positive, got {t.zero_shot_interval}",
    )
    _require(
        not t.zero_shot_tasks or p.tp == 1,
        "train.zero_shot_tasks needs parallel.tp=1 (evaluate TP>1 runs afterwards with "
        "megadyt eval, which merges the TP shards)",
    )
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
    _require(
        t.global_batch_size % t.micro_batch_size == 0,
        f"train.global_batch_size ({t.global_batch_size}) must be a multiple of "
        f"train.micro_batch_size ({t.micro_batch_size})",
    )
    if world_size is not None:
        check_world_size(world_size, p.tp)
        dp = world_size // p.tp
        _require(
            t.global_batch_size % (t.micro_batch_size * dp) == 0,
            f"train.global_batch_size ({t.global_batch_size}) must be a multiple of "
            f"train.micro_batch_size × data-parallel size ({t.micro_batch_size} × {dp})",
        )

    _require(len(d.prefixes) > 0, "data.prefixes must name at least one dataset")
    check_data_weights(d.prefixes, d.weights)
    return cfg
