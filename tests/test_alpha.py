"""The α₀ width rule against the paper's Tables 10/11, and α₀ in a built model per norm role."""

from __future__ import annotations

import pytest
import torch
from helpers import CONFIGS

from megadyt.config import load_config
from megadyt.model import build_model
from megadyt.norms import Derf, DyT, alpha0_for_width, resolve_alpha0
from megadyt.parallel.distributed import seed_everything

# Paper Tables 10 and 11 (paper-facts.md): width -> (α₀ attention, α₀ FFN and final).
PAPER_TABLE = {
    1024: (1.0, 1.0),
    2048: (1.0, 0.5),
    4096: (0.8, 0.2),
    5120: (0.6, 0.15),
    8192: (0.2, 0.05),
}
ROWS = sorted(PAPER_TABLE)


@pytest.mark.parametrize("width", ROWS)
def test_table_rows_exact(width):
    assert alpha0_for_width(width) == PAPER_TABLE[width]


def test_monotone_non_increasing_in_width():
    widths = list(range(64, 16384 + 1, 64))
    values = [alpha0_for_width(w) for w in widths]
    for (w0, (a0, o0)), (w1, (a1, o1)) in zip(zip(widths, values), zip(widths[1:], values[1:])):
        assert a1 <= a0, (w0, w1)
        assert o1 <= o0, (w0, w1)
    # and strictly decreasing somewhere in each column (not a constant function)
    assert values[0][0] > values[-1][0] and values[0][1] > values[-1][1]


@pytest.mark.parametrize("width", [128, 256, 512, 768])
def test_extrapolates_below_table_not_clamped(width):
    attention, other = alpha0_for_width(width)
    assert attention > PAPER_TABLE[1024][0]
    assert other > PAPER_TABLE[1024][1]
    assert attention >= other > 0


def test_width_256_above_1024_row():
    attention, other = alpha0_for_width(256)
    assert attention > 1.0 and other > 1.0


@pytest.mark.parametrize("lo,hi", list(zip(ROWS, ROWS[1:])))
def test_interpolates_strictly_between_neighbours(lo, hi):
    for width in (lo + 1, (lo + hi) // 2, hi - 1):
        got = alpha0_for_width(width)
        for column in (0, 1):
            a_lo, a_hi = PAPER_TABLE[lo][column], PAPER_TABLE[hi][column]
            if a_lo == a_hi:  # flat segment (1024->2048 attention): stays on the value
                assert got[column] == pytest.approx(a_lo)
            else:
                assert a_hi < got[column] < a_lo, (width, column, got)


def test_above_table_holds_widest_row():
    assert alpha0_for_width(16384) == PAPER_TABLE[8192]


def test_resolve_alpha0_width_rule_and_sources():
    a = resolve_alpha0(4096)
    assert (a.attention, a.ffn, a.final) == (0.8, 0.2, 0.2)
    assert a.sources == {"attention": "width rule", "ffn": "width rule", "final": "width rule"}


def test_resolve_alpha0_honours_overrides():
    a = resolve_alpha0(4096, attention=0.33, final=0.07)
    assert (a.attention, a.ffn, a.final) == (0.33, 0.2, 0.07)
    assert a.sources == {"attention": "config", "ffn": "width rule", "final": "config"}
    b = resolve_alpha0(5120, ffn=0.9)
    assert (b.attention, b.ffn, b.final) == (0.6, 0.9, 0.15)
    assert b.sources["ffn"] == "config" and b.sources["final"] == "width rule"


# ------------------------------------------------------------------ α₀ in a built model


def norm_alphas(model) -> dict[str, list[float]]:
    """α of every norm in the model, grouped by role (from the module's place in the model)."""
    roles: dict[str, list[float]] = {"attention": [], "ffn": [], "final": []}
    for name, module in model.named_modules():
        if not isinstance(module, (DyT, Derf)):
            continue
        if name.endswith("input_layernorm"):
            role = "attention"
        elif name.endswith("pre_mlp_layernorm"):
            role = "ffn"
        elif name.endswith("final_layernorm"):
            role = "final"
        else:
            raise AssertionError(f"unexpected norm {name}")
        roles[role].append(module.alpha.item())
    return roles


# width 1536 lies between the 1024 and 2048 rows: attention and FFN/final α₀ differ there.
SMALL_WIDE = [
    "model.hidden_size=1536",
    "model.num_attention_heads=12",
    "model.num_layers=2",
    "model.ffn_hidden_size=64",
    "model.vocab_size=64",
    "model.seq_length=16",
]


@pytest.mark.parametrize("norm", ["dyt", "derf"])
@pytest.mark.parametrize(
    "overrides",
    [
        [],
        SMALL_WIDE,
        ["model.alpha0_attention=0.3", "model.alpha0_ffn=0.7", "model.alpha0_final=1.3"],
        [*SMALL_WIDE, "model.alpha0_final=2.5"],
    ],
    ids=["tiny-width-rule", "w1536-width-rule", "tiny-all-config", "w1536-final-config"],
)
def test_built_model_norms_have_resolved_alpha(tp1_distributed, norm, overrides):
    cfg = load_config(CONFIGS / "tiny" / f"{norm}.yaml", overrides)
    m = cfg.model
    expected = resolve_alpha0(m.hidden_size, m.alpha0_attention, m.alpha0_ffn, m.alpha0_final)
    seed_everything(1)
    model = build_model(cfg)
    roles = norm_alphas(model)

    assert len(roles["attention"]) == len(roles["ffn"]) == m.num_layers
    assert len(roles["final"]) == 1
    for role in ("attention", "ffn", "final"):
        want = torch.tensor(getattr(expected, role), dtype=torch.float32).item()
        assert roles[role] == [want] * len(roles[role]), role
    # the α values themselves: written independently of resolve_alpha0
    if m.hidden_size == 1536 and m.alpha0_attention is None:
        assert roles["attention"][0] == pytest.approx(1.0)
        # log-linear between (1024, 1.0) and (2048, 0.5): 0.5 ** log2(1536/1024) = 1/1.5
        assert roles["ffn"][0] == pytest.approx(1 / 1.5, rel=1e-6)
        if m.alpha0_final is None:
            assert roles["final"][0] == pytest.approx(1 / 1.5, rel=1e-6)
    if m.alpha0_attention == 0.3:
        assert roles["attention"][0] == pytest.approx(0.3)
        assert roles["ffn"][0] == pytest.approx(0.7)
        assert roles["final"][0] == pytest.approx(1.3)
    if m.alpha0_final == 2.5:
        assert roles["final"][0] == pytest.approx(2.5)
        assert roles["ffn"][0] != pytest.approx(2.5)
    if m.hidden_size == 128 and m.alpha0_attention is None:
        # below the table: extrapolated (1024/128 × the 1024 row), not clamped to 1.0
        assert all(a > 1.0 for a in roles["attention"] + roles["ffn"] + roles["final"])


def test_rmsnorm_model_has_no_alpha(tp1_distributed):
    cfg = load_config(CONFIGS / "tiny" / "rmsnorm.yaml")
    seed_everything(1)
    model = build_model(cfg)
    assert not any(n.endswith(".alpha") for n, _ in model.named_parameters())
    assert sum(r for r in map(len, norm_alphas(model).values())) == 0
