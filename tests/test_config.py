"""Config loading: each bad case is a one-line ConfigError naming the key; precedence rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TINY

from megadyt.config import Config, config_from_dict, load_config, merge_overrides
from megadyt.config.loader import parse_override
from megadyt.errors import ConfigError, MegadytError
from megadyt.norms.registry import has_embedding_scale


def config_error(overrides: list[str], path: Path | None = TINY, world_size=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides, world_size=world_size)
    message = str(info.value)
    assert message and "\n" not in message, f"not one line: {message!r}"
    return message


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_config_error_is_a_user_error_with_exit_code_2():
    assert issubclass(ConfigError, MegadytError)
    assert ConfigError.exit_code == 2


def test_tiny_loads_cleanly():
    cfg = load_config(TINY)
    assert isinstance(cfg, Config)
    assert cfg.model.norm == "dyt"


# ------------------------------------------------------------------ unknown keys


def test_unknown_top_level_key(tmp_path):
    path = write(tmp_path, "model:\n  norm: dyt\nmodle:\n  norm: dyt\n")
    message = config_error([], path)
    assert "'modle'" in message and "unknown" in message


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.hiden_size=64", "model.hiden_size"),
        ("train.stepz=3", "train.stepz"),
        ("parallel.tensor_parallel=2", "parallel.tensor_parallel"),
    ],
)
def test_unknown_nested_key(override, key):
    message = config_error([override])
    assert f"'{key}'" in message and "unknown" in message


def test_unknown_nested_key_in_yaml(tmp_path):
    path = write(tmp_path, "train:\n  steps: 3\n  sped: 1\n")
    assert "'train.sped'" in config_error([], path)


# ------------------------------------------------------------------ wrong types


@pytest.mark.parametrize(
    "override,key",
    [
        ("train.steps=ten", "train.steps"),  # string for int
        ("train.steps=1.5", "train.steps"),  # float for int
        ("train.steps=true", "train.steps"),  # bool for int
        ("parallel.tp=2.0", "parallel.tp"),
        ("model.num_query_groups=two", "model.num_query_groups"),  # int | None
        ("parallel.sp=1", "parallel.sp"),  # int for bool
        ("train.lr=fast", "train.lr"),  # string for float
        ("train.lr=true", "train.lr"),  # bool for float
        ("run.dir=3", "run.dir"),  # int for str
        ("data.prefixes=abc", "data.prefixes"),  # str for list
        ("data.weights=[1, x]", "data.weights"),  # bad element in list | None
        ("data.prefixes=[a, 3]", "data.prefixes[1]"),  # bad list element: its index is named
    ],
)
def test_wrong_type(override, key):
    message = config_error([override])
    assert f"'{key}'" in message and "expected" in message


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.norm=layernorm", "model.norm"),
        ("parallel.recompute=some", "parallel.recompute"),
        ("train.precision=fp16", "train.precision"),
        ("model.embedding_scale=maybe", "model.embedding_scale"),
    ],
)
def test_invalid_literal(override, key):
    message = config_error([override])
    assert f"'{key}'" in message
    if key == "model.norm":
        assert all(n in message for n in ("rmsnorm", "dyt", "derf"))


# ------------------------------------------------------------------ impossible combinations


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["parallel.tp=3"], "model.num_attention_heads"),  # 4 heads, TP 3
        (["model.num_query_groups=1", "parallel.tp=2"], "model.num_query_groups"),  # KV 1, TP 2
        (["parallel.sp=true"], "parallel.sp"),  # SP with TP 1
        (
            ["parallel.offload_optimizer=true", "parallel.zero_stage=1"],
            "parallel.offload_optimizer",
        ),
        (["model.hidden_size=130"], "model.hidden_size"),  # 130 % 4 heads
        (["model.hidden_size=100"], "head size of 25"),  # odd: RoPE rotates pairs
        (["model.num_query_groups=3"], "model.num_query_groups"),  # 4 heads % 3 groups
        (["parallel.zero_stage=4"], "parallel.zero_stage"),
        (["train.global_batch_size=6"], "train.global_batch_size"),  # not a multiple of micro 4
        (["model.num_layers=0"], "model.num_layers"),
        (["model.alpha0_ffn=-1"], "model.alpha0_ffn"),
        (["data.weights=[1.0, 2.0]"], "data.weights"),  # one prefix, two weights
    ],
)
def test_impossible_combination(overrides, key):
    assert key in config_error(overrides)


def test_possible_neighbours_of_the_impossible_cases_pass():
    """The same keys with valid values load, so the failures above are about the values."""
    load_config(TINY, ["parallel.tp=2", "parallel.sp=true", "model.num_query_groups=2"])
    load_config(TINY, ["parallel.offload_optimizer=true", "parallel.zero_stage=2"])
    load_config(TINY, ["model.hidden_size=136"])  # 132 / 4 heads is 33: odd, refused


def test_global_batch_not_divisible_by_micro_times_dp():
    # tiny: micro 4, global 8. World 4 with TP 1 -> DP 4 -> needs a multiple of 16.
    message = config_error([], world_size=4)
    assert "train.global_batch_size" in message
    load_config(TINY, world_size=2)  # DP 2: 8 = 4 × 2, fine
    load_config(TINY, ["parallel.tp=2"], world_size=4)  # DP 2 again
    assert "parallel.tp" in config_error(["parallel.tp=2"], world_size=3)


# ------------------------------------------------------------------ --set parsing


@pytest.mark.parametrize(
    "text,path,value",
    [
        ("train.steps=10", ["train", "steps"], 10),
        ("train.lr=0.5", ["train", "lr"], 0.5),
        ("train.lr=3.0e-4", ["train", "lr"], 3.0e-4),
        ("parallel.sp=true", ["parallel", "sp"], True),
        ("parallel.sp=false", ["parallel", "sp"], False),
        ("data.prefixes=[a, b]", ["data", "prefixes"], ["a", "b"]),
        ("data.weights=[1, 2.5]", ["data", "weights"], [1, 2.5]),
        ("run.name=x=y", ["run", "name"], "x=y"),  # only the first '=' splits
        ("train.stop_at_step=", ["train", "stop_at_step"], None),
        ("train.stop_at_step=null", ["train", "stop_at_step"], None),
    ],
)
def test_parse_override_values(text, path, value):
    assert parse_override(text) == (path, value)


def test_set_values_are_typed_in_the_config():
    cfg = load_config(
        TINY,
        [
            "train.steps=10",
            "train.lr=1e-3",
            "train.peak_tflops=2E2",
            "parallel.sp=true",
            "parallel.tp=2",
            "data.prefixes=[a, b]",
            "data.weights=[1, 2.5]",
            "run.name=x",
        ],
    )
    assert cfg.train.steps == 10 and isinstance(cfg.train.steps, int)
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.train.peak_tflops == 200.0
    assert cfg.parallel.sp is True
    assert cfg.data.prefixes == ["a", "b"]
    assert cfg.data.weights == [1.0, 2.5] and all(isinstance(w, float) for w in cfg.data.weights)
    assert cfg.run.name == "x"


@pytest.mark.parametrize(
    "text,value",
    [
        ("model.embedding_scale=on", "on"),
        ("model.embedding_scale=off", "off"),
        ("model.embedding_scale=auto", "auto"),
    ],
)
def test_on_off_literal_survives_yaml_booleans(text, value):
    assert load_config(TINY, [text]).model.embedding_scale == value


def test_on_off_literal_in_yaml_file(tmp_path):
    path = write(tmp_path, "model:\n  embedding_scale: off\n")
    cfg = load_config(path)
    assert cfg.model.embedding_scale == "off" and not has_embedding_scale(cfg.model)


def test_int_float_coercion_is_exact():
    cfg = load_config(TINY, ["train.lr=2"])  # an int where a float is expected is fine
    assert cfg.train.lr == 2.0 and isinstance(cfg.train.lr, float)


@pytest.mark.parametrize(
    "text,needle",
    [
        ("train.steps", "section.key=value"),  # no '='
        ("steps=3", "section.key"),  # no section
        ("train.=3", "section.key"),  # empty key
        ("train.lr=[1, 2", "not valid YAML"),
    ],
)
def test_malformed_set(text, needle):
    message = config_error([text])
    assert needle in message and text in message


def test_set_into_a_non_section():
    message = config_error(["train.steps.value=3"])
    assert "'steps' is not a section" in message


def test_section_not_a_mapping_in_yaml(tmp_path):
    path = write(tmp_path, "model: 3\n")
    message = config_error([], path)
    assert "'model'" in message and "mapping" in message


def test_top_level_not_a_mapping(tmp_path):
    assert "mapping" in config_error([], write(tmp_path, "- a\n- b\n"))


@pytest.mark.parametrize("text", ["", "\n\n", "# all commented out\n", "---\n"])
def test_an_empty_config_file_is_refused_not_trained_as_defaults(tmp_path, text):
    path = write(tmp_path, text)
    message = config_error([], path)
    assert message.startswith(f"config file '{path}' is empty"), message
    assert "configs/tiny/dyt.yaml" in message  # where to start from


def test_malformed_yaml_file(tmp_path):
    path = write(tmp_path, "model:\n  norm: dyt\n  hidden_size: [128\ntrain:\n  steps: 1\n")
    message = config_error([], path)
    assert str(path) in message and "YAML" in message and "line" in message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    message = config_error([], path)
    assert str(path) in message and "not found" in message


# ------------------------------------------------------------------ precedence


def test_precedence_set_beats_yaml_beats_defaults():
    defaults = Config()
    from_yaml = load_config(TINY)
    assert defaults.train.steps != from_yaml.train.steps == 300  # YAML beats defaults
    assert from_yaml.model.rotary_base == defaults.model.rotary_base  # not in YAML: default
    overridden = load_config(TINY, ["train.steps=7", "model.rotary_base=500"])
    assert overridden.train.steps == 7  # --set beats YAML
    assert overridden.model.rotary_base == 500  # --set beats defaults
    assert overridden.model.hidden_size == from_yaml.model.hidden_size  # untouched keys stay
    last = load_config(TINY, ["train.steps=7", "train.steps=9"])
    assert last.train.steps == 9  # later --set wins


def test_no_file_means_defaults():
    assert load_config(None).to_dict() == Config().to_dict()
    assert load_config(None, ["train.steps=5"]).train.steps == 5


def test_merge_overrides_creates_sections():
    assert merge_overrides({}, ["train.steps=4"]) == {"train": {"steps": 4}}


# ------------------------------------------------------------------ renamed keys

DEPRECATED = (
    "megadyt: warning: train.exit_interval is deprecated; use train.stop_at_step "
    "(the same absolute step)\n"
)


def test_exit_interval_is_a_deprecated_alias_of_stop_at_step(tmp_path, capsys):
    assert load_config(TINY, ["train.stop_at_step=5"]).train.stop_at_step == 5
    assert capsys.readouterr().err == ""  # the new name: no warning
    assert load_config(TINY, ["train.exit_interval=5"]).train.stop_at_step == 5
    assert capsys.readouterr().err == DEPRECATED  # --set: one line
    path = write(tmp_path, "train:\n  exit_interval: 6\n")
    assert load_config(path).train.stop_at_step == 6
    assert capsys.readouterr().err == DEPRECATED  # YAML: one line
    cfg = load_config(path, ["train.exit_interval=7"])
    assert cfg.train.stop_at_step == 7  # --set still beats YAML
    assert capsys.readouterr().err == DEPRECATED  # both: still exactly one line
    assert "train.stop_at_step must be positive" in config_error(["train.exit_interval=0"])
    assert "train.stop_at_step" in config_error(
        [], write(tmp_path, "train:\n  exit_interval: 2\n  stop_at_step: 2\n")
    )
    capsys.readouterr()
    # a config stored with an old checkpoint loads silently (nobody can edit it)
    assert config_from_dict({"train": {"exit_interval": 3}}).train.stop_at_step == 3
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------ init and α calibration


def test_init_std_auto_is_one_over_sqrt_width_and_a_number_overrides():
    assert load_config(TINY).model.resolved_init_std == pytest.approx(128**-0.5)
    cfg = load_config(TINY, ["model.init_std=0.02"])
    assert cfg.model.init_std == 0.02 and cfg.model.resolved_init_std == 0.02


@pytest.mark.parametrize(
    "override,needle",
    [
        ("model.init_std=-0.1", "model.init_std must be positive or 'auto'"),
        ("model.init_std=big", "model.init_std"),
        ("model.alpha_init=guess", "model.alpha_init"),
        ("model.alpha_calibration_attention=0", "model.alpha_calibration_attention must be"),
        ("model.alpha_calibration_other=-1", "model.alpha_calibration_other must be"),
        ("model.alpha_calibration_other=big", "model.alpha_calibration_other"),
        ("model.alpha_calibration_final=0", "model.alpha_calibration_final must be"),
        ("train.saturation_patience=0", "train.saturation_patience must be positive"),
    ],
)
def test_bad_init_and_calibration_settings(override, needle):
    assert needle in config_error([override])


def test_presets_keep_the_paper_recipe_and_tiny_calibrates():
    root = TINY.parents[1]
    for path in sorted(root.glob("llama-*/*.yaml")):
        m = load_config(path).model
        assert (m.init_std, m.alpha_init) == (0.02, "rule"), path
    for path in sorted([*root.glob("tiny/*.yaml"), *root.glob("small/*.yaml")]):
        m = load_config(path).model
        assert (m.init_std, m.alpha_init) == ("auto", "calibrate"), path
