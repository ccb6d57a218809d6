"""The CLI turns user errors into one stderr line and exit code 2; --debug shows a traceback."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from helpers import ROOT, run_cli
from helpers import TINY as TINY_YAML

from megadyt.cli.main import main
from megadyt.errors import ConfigError

TINY = str(TINY_YAML)

BAD_CASES = {
    "missing-file": (["--config", str(ROOT / "configs" / "nope.yaml")], "nope.yaml"),
    "unknown-key": (["--config", TINY, "--set", "model.hiden=3"], "model.hiden"),
    "wrong-type": (["--config", TINY, "--set", "train.steps=abc"], "train.steps"),
    "bad-literal": (["--config", TINY, "--set", "model.norm=layernorm"], "model.norm"),
    "sp-without-tp": (["--config", TINY, "--set", "parallel.sp=true"], "parallel.sp"),
    "heads-vs-tp": (["--config", TINY, "--set", "parallel.tp=3"], "model.num_attention_heads"),
    "set-without-equals": (["--config", TINY, "--set", "train.steps"], "train.steps"),
    "odd-head-size": (["--config", TINY, "--set", "model.hidden_size=100"], "head size of 25"),
}


def assert_one_line_error(stderr: str, needle: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("megadyt: error:"), stderr
    assert needle in lines[0]
    assert "Traceback" not in stderr


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_info_bad_config_exits_2_with_one_line(capsys, case):
    args, needle = BAD_CASES[case]
    assert main(["info", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_line_error(captured.err, needle)


@pytest.mark.parametrize("position", ["before", "after"])
def test_debug_raises_instead(capsys, position):
    args, _ = BAD_CASES["wrong-type"]
    argv = ["--debug", "info", *args] if position == "before" else ["info", *args, "--debug"]
    with pytest.raises(ConfigError, match="train.steps"):
        main(argv)


def test_good_config_exits_0(capsys):
    assert main(["info", "--config", TINY, "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["norm"] == "dyt"
    assert "error" not in captured.err


def test_text_output_lists_counts(capsys):
    assert main(["info", "--config", TINY]) == 0
    out = capsys.readouterr().out
    assert "params_total" in out and "alpha0" in out and "width rule" in out


def test_info_says_which_alpha_init_applies(capsys):
    assert main(["info", "--config", TINY, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    planned = 300 * 8 * 256 / info["params_total"]  # the tiny config: 0.33 tokens/param
    assert info["alpha_init"] == {
        "mode": "calibrate",
        "attention": 2.0,
        "other": 1.0,
        "final": 1.0,
        "source": f"run-length rule, {planned:.3g} tokens/param planned",
    }
    assert info["init_std"]["value"] == pytest.approx(128**-0.5)
    assert main(["info", "--config", TINY, "--set", "model.alpha_init=rule"]) == 0
    assert "rule: α starts at α₀" in capsys.readouterr().out
    assert main(["info", "--config", TINY]) == 0
    assert "α = 2/std(input) for attention norms" in capsys.readouterr().out


def test_info_says_which_parameters_weight_decay_reaches(capsys):
    assert main(["info", "--config", TINY, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["weight_decay"] == {"value": 0.1, "norm_params": False, "norm_scalars": False}
    for overrides, needle in [
        ([], "the norms' parameters and any embedding scalar spared"),
        (["train.decay_norm_params=true"], "the norms' parameters and any embedding scalar too"),
        (["train.decay_norm_params=true", "train.decay_norm_scalars=false"], "α and s spared"),
    ]:
        assert main(["info", "--config", TINY, *[f"--set={o}" for o in overrides]]) == 0
        assert needle in capsys.readouterr().out, overrides


def test_subprocess_bad_config_and_debug():
    """A real process: exit 2 and one stderr line; with --debug, a traceback and non-zero exit."""
    args, needle = BAD_CASES["bad-literal"]
    proc = run_cli("info", *args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert_one_line_error(proc.stderr, needle)

    proc = run_cli("--debug", "info", *args)
    assert proc.returncode not in (0, 2)
    assert "Traceback" in proc.stderr and "ConfigError" in proc.stderr and needle in proc.stderr


def test_usage_error_is_argparse_exit_2(capsys):
    """A missing required argument is argparse's usage error: exit 2, no traceback."""
    with pytest.raises(SystemExit) as info:
        main(["info"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--config" in err and "Traceback" not in err


# ------------------------------------------------------------------ launching N processes

WRAPPER = "python -m megadyt.parallel.torchrun --nproc_per_node=N -m megadyt train"
# a plain torchrun command: `torchrun` with arguments, not megadyt's `....parallel.torchrun`
PLAIN_TORCHRUN = re.compile(r"(?<![\w./])torchrun\s+-")


def test_help_says_how_to_launch_on_n_processes(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert WRAPPER in capsys.readouterr().out


def test_every_documented_multi_process_command_uses_the_wrapper():
    """Plain torchrun prints its ChildFailedError traceback after megadyt's one-line error,
    and reports a graceful stop as a failure: the docs launch through megadyt's wrapper."""
    pages = [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("launch/**/*.md"),
             *ROOT.glob("megadyt/**/*.md"), *ROOT.glob("tokenizer/*.md")]  # fmt: skip
    plain = [
        f"{page.relative_to(ROOT)}:{number}: {line.strip()}"
        for page in pages
        for number, line in enumerate(page.read_text().splitlines(), start=1)
        if PLAIN_TORCHRUN.search(line)
    ]
    assert not plain, "\n".join(plain)
    assert (
        "python -m megadyt.parallel.torchrun --nproc_per_node=2 -m megadyt train"
        in (ROOT / "README.md").read_text()
    )


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="the notice is DeepSpeed's on no CUDA only"
)
def test_deepspeeds_cpu_accelerator_notice_is_silenced_where_expected():
    """Without CUDA DeepSpeed logs "Setting accelerator to CPU ..." (to stdout) at import;
    that is megadyt's CPU path by design, and the line came before every error."""
    script = "import sys; sys.argv = ['x']; {}import deepspeed"
    plain = subprocess.run([sys.executable, "-c", script.format("")], capture_output=True,
                           text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert "Setting accelerator to CPU" in plain.stdout + plain.stderr  # the notice exists
    quiet = subprocess.run([sys.executable, "-c", script.format("import megadyt; ")],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "Setting accelerator to CPU" not in quiet.stdout + quiet.stderr
