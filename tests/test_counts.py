"""Parameter counts: `megadyt info` on every preset, and the analytic count against real builds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CONFIGS, ROOT

from megadyt.cli.main import main
from megadyt.config import load_config
from megadyt.model import build_model, count_parameters, norm_parameter_names
from megadyt.norms.registry import has_embedding_scale
from megadyt.parallel.distributed import seed_everything

# Published LLaMA parameter counts (paper-facts.md; Touvron et al.).
PUBLISHED_RMSNORM = {
    "llama-7b": 6_738_415_616,
    "llama-13b": 13_015_864_320,
    "llama-34b": 33_743_970_304,
    "llama-70b": 68_976_648_192,
}
PUBLISHED_LAYERS = {"llama-7b": 32, "llama-13b": 40, "llama-34b": 48, "llama-70b": 80}
ALL_YAML = sorted(CONFIGS.rglob("*.yaml"))
TINY = sorted((CONFIGS / "tiny").glob("*.yaml"))


def info_json(capsys, path: Path, *overrides: str) -> dict:
    argv = ["info", "--config", str(path), "--json"]
    for override in overrides:
        argv += ["--set", override]
    assert main(argv) == 0
    out = capsys.readouterr().out
    return json.loads(out)


@pytest.mark.parametrize("size", sorted(PUBLISHED_RMSNORM))
def test_info_reproduces_published_counts(capsys, size):
    rms = info_json(capsys, CONFIGS / size / "rmsnorm.yaml")
    dyt = info_json(capsys, CONFIGS / size / "dyt.yaml")
    derf = info_json(capsys, CONFIGS / size / "derf.yaml")
    L = PUBLISHED_LAYERS[size]

    assert rms["params_total"] == PUBLISHED_RMSNORM[size]
    assert rms["num_layers"] == dyt["num_layers"] == derf["num_layers"] == L
    assert (rms["norm"], dyt["norm"], derf["norm"]) == ("rmsnorm", "dyt", "derf")
    # one α per norm (2L+1 norms) plus the embedding scalar; Derf adds one s per norm
    assert dyt["params_total"] - rms["params_total"] == 2 * L + 2
    assert derf["params_total"] - dyt["params_total"] == 2 * L + 1
    # params_norm: γ per norm (+ α, s, embedding scalar); everything else is identical
    d = rms["hidden_size"]
    assert rms["params_norm"] == (2 * L + 1) * d
    assert dyt["params_norm"] == (2 * L + 1) * (d + 1) + 1
    assert derf["params_norm"] == (2 * L + 1) * (d + 2) + 1
    for info in (rms, dyt, derf):
        parts = ("embedding", "output", "attention", "mlp", "norm")
        assert sum(info[f"params_{p}"] for p in parts) == info["params_total"]
        for key in ("params_embedding", "params_output", "params_attention", "params_mlp"):
            assert info[key] == rms[key]
    assert not rms["embedding_scale"] and dyt["embedding_scale"] and derf["embedding_scale"]


def test_info_json_has_required_keys(capsys):
    info = info_json(capsys, CONFIGS / "llama-70b" / "dyt.yaml")
    required = {
        "params_total",
        "params_norm",
        "norm",
        "num_layers",
        "hidden_size",
        "ffn_hidden_size",
        "num_attention_heads",
        "num_query_groups",
        "vocab_size",
        "seq_length",
        "micro_batch_size",
        "global_batch_size",
    }
    assert required <= set(info)
    cfg = load_config(CONFIGS / "llama-70b" / "dyt.yaml")
    assert info["hidden_size"] == cfg.model.hidden_size == 8192
    assert info["num_attention_heads"] == 64 and info["num_query_groups"] == 8
    assert info["ffn_hidden_size"] == 28672 and info["vocab_size"] == 32000
    assert info["seq_length"] == 4096
    assert info["global_batch_size"] == cfg.train.global_batch_size
    assert info["micro_batch_size"] == cfg.train.micro_batch_size


def test_info_overrides_change_counts(capsys):
    base = info_json(capsys, CONFIGS / "llama-7b" / "dyt.yaml")
    with_bias = info_json(capsys, CONFIGS / "llama-7b" / "dyt.yaml", "model.norm_bias=true")
    assert with_bias["params_total"] - base["params_total"] == (2 * 32 + 1) * 4096


def test_module_and_console_entry_points_agree(capsys):
    path = CONFIGS / "llama-7b" / "rmsnorm.yaml"
    in_process = info_json(capsys, path)
    proc = subprocess.run(
        [sys.executable, "-m", "megadyt", "info", "--config", str(path), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == in_process
    assert in_process["params_total"] == PUBLISHED_RMSNORM["llama-7b"]


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_preset_loads_and_validates(path):
    cfg = load_config(path)
    world = cfg.parallel.tp * 2  # some DP > 1 world the preset must also fit
    assert load_config(path, world_size=world).parallel.tp == cfg.parallel.tp
    assert cfg.model.norm == path.stem
    assert count_parameters(cfg.model).total > 0


def test_presets_cover_every_size_and_norm():
    found = {(p.parent.name, p.stem) for p in ALL_YAML}
    for size in [*PUBLISHED_RMSNORM, "tiny"]:
        for norm in ("rmsnorm", "dyt", "derf"):
            assert (size, norm) in found


# ------------------------------------------------------------------ analytic vs real build


VARIANTS = [(path, ()) for path in TINY] + [
    (CONFIGS / "tiny" / "dyt.yaml", ("model.num_query_groups=2",)),
    (CONFIGS / "tiny" / "rmsnorm.yaml", ("model.num_query_groups=1",)),
    (CONFIGS / "tiny" / "dyt.yaml", ("model.norm_bias=true",)),
    (CONFIGS / "tiny" / "derf.yaml", ("model.norm_bias=true", "model.num_query_groups=2")),
    (CONFIGS / "tiny" / "dyt.yaml", ("model.embedding_scale=off",)),
    (CONFIGS / "tiny" / "rmsnorm.yaml", ("model.embedding_scale=on",)),
]


@pytest.mark.parametrize(
    "path,overrides",
    VARIANTS,
    ids=[f"{p.stem}{'+' + ','.join(o) if o else ''}" for p, o in VARIANTS],
)
def test_analytic_count_matches_real_build(tp1_distributed, path, overrides):
    cfg = load_config(path, list(overrides))
    seed_everything(1)
    model = build_model(cfg)
    params = dict(model.named_parameters())
    counts = count_parameters(cfg.model)

    assert sum(p.numel() for p in params.values()) == counts.total
    norm_names = norm_parameter_names(model)
    assert len(set(norm_names)) == len(norm_names)
    assert sum(params[n].numel() for n in norm_names) == counts.norm
    assert params["embedding.word_embeddings.weight"].numel() == counts.embedding
    assert params["output_layer.weight"].numel() == counts.output
    has_scale = any(n.endswith("embedding_scale") for n in params)
    assert has_scale == has_embedding_scale(cfg.model)


@pytest.mark.parametrize("norm", ["dyt", "derf"])
@pytest.mark.parametrize("impl", ["auto", "reference", "compiled"])
def test_norm_impl_reaches_every_norm_module(tp1_distributed, norm, impl):
    from megadyt.norms.registry import NORMS

    cfg = load_config(CONFIGS / "tiny" / f"{norm}.yaml", [f"model.norm_impl={impl}"])
    model = build_model(cfg)
    norms = [m for m in model.modules() if isinstance(m, NORMS[norm].cls)]
    assert len(norms) == 2 * cfg.model.num_layers + 1
    assert {m.impl for m in norms} == {impl}
