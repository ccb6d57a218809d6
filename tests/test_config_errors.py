"""Config errors that save the user reruns: every layout problem in one message, and a
directory passed as --config named as a directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import ROOT, TINY, run_cli

from megadyt.config import load_config
from megadyt.config.validate import check_world_size
from megadyt.errors import ConfigError


def config_error(overrides: list[str], path: Path = TINY, world_size: int | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides, world_size=world_size)
    message = str(info.value)
    assert message and "\n" not in message, f"not one line: {message!r}"
    return message


# ------------------------------------------------------------------ layout: all at once

# tiny with TP 4 is valid (4 heads, ffn 352, vocab 4096); each entry breaks one rule of it.
TP4 = ["parallel.tp=4"]
HEADS = ["model.num_attention_heads=6", "model.hidden_size=132"]  # 132 % 6 == 0; 6 % 4 != 0
FFN = ["model.ffn_hidden_size=90"]
VOCAB = ["model.vocab_size=1001"]


def entries(message: str) -> list[str]:
    """The problems a layout message lists (a lone problem is its own entry)."""
    if " layout problems: " in message:
        message = message.split(" layout problems: ", 1)[1]
    return message.split("; ")


def test_every_layout_problem_is_reported_at_once():
    """Heads, FFN, vocab and world size broken together: one line names each of them."""
    message = config_error([*TP4, *HEADS, *FFN, *VOCAB], world_size=6)
    found = entries(message)
    # 6 heads also leave no query-group count TP 4 divides: a fifth problem, rightly named
    assert message.startswith(f"{len(found)} layout problems: ") and len(found) == 5, message
    expected = [
        entry for broken in (HEADS, FFN, VOCAB) for entry in entries(config_error([*TP4, *broken]))
    ]
    world = "world size 6 is not divisible by parallel.tp (4) (launch a multiple of tp processes)"
    assert found == [*expected, world]
    assert any(e.startswith("model.num_query_groups (6)") for e in found)


def test_single_layout_problem_keeps_its_message():
    world = config_error(["parallel.tp=2"], world_size=3)
    assert (
        world
        == "world size 3 is not divisible by parallel.tp (2); launch a multiple of tp processes"
    )
    with pytest.raises(ConfigError) as info:
        check_world_size(3, 2)  # init_distributed's standalone check: the same words
    assert str(info.value) == world
    assert config_error(["model.hidden_size=130"]) == (
        "model.hidden_size (130) must be divisible by model.num_attention_heads (4)"
    )


@pytest.mark.parametrize("world_size", [2, 14])  # DP would be 0 (a crash) or 3 (a wrong claim)
def test_no_data_parallel_check_without_whole_tp_groups(world_size):
    message = config_error(TP4, world_size=world_size)
    assert message.startswith(f"world size {world_size} is not divisible"), message
    assert "data-parallel" not in message


def test_batch_not_a_multiple_of_micro_is_reported_once():
    # global 6 % micro 4: the micro × DP rule then fails too, but says nothing new
    message = config_error(["train.global_batch_size=6"], world_size=2)
    assert "train.micro_batch_size (4)" in message
    assert "layout problems" not in message and "data-parallel" not in message


def test_bad_sizes_stop_before_the_layout_checks_divide_by_them():
    message = config_error([*TP4, "model.num_attention_heads=0", "train.micro_batch_size=0"])
    assert message == "model.num_attention_heads must be positive, got 0"


# ------------------------------------------------------------------ --config DIRECTORY


def test_directory_config_names_its_yaml_files(tmp_path):
    for name in ("b.yml", "a.yaml", "notes.txt"):
        (tmp_path / name).write_text("train:\n  steps: 3\n")
    message = config_error([], tmp_path)
    assert message == (
        f"config '{tmp_path}' is a directory, not a YAML file; "
        f"pass one of its files: {tmp_path / 'a.yaml'}, {tmp_path / 'b.yml'}"
    )


def test_directory_config_with_many_or_no_yaml_files(tmp_path):
    many = tmp_path / "many"
    many.mkdir()
    for i in range(5):
        (many / f"c{i}.yaml").write_text("")
    message = config_error([], many)
    assert message.endswith(f"pass one of its 5 YAML files, e.g. {many / 'c0.yaml'}"), message
    empty = tmp_path / "empty"
    empty.mkdir()
    message = config_error([], empty)
    assert "is a directory" in message and "not found" not in message
    suggested = message.rsplit("e.g. ", 1)[1]
    assert (ROOT / suggested).is_file()  # the fallback suggestion is a real config


def test_cli_directory_config_is_one_error_line():
    """The real `megadyt train --config configs/tiny`: exit 2, one error line, no traceback."""
    proc = run_cli("train", "--config", "configs/tiny")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("megadyt: error: "), proc.stderr
    assert "'configs/tiny' is a directory" in lines[0] and "Traceback" not in proc.stderr
    for path in sorted((ROOT / "configs" / "tiny").glob("*.yaml")):
        assert str(path.relative_to(ROOT)) in lines[0]
