"""TP=2 (with and without sequence parallelism) must reproduce TP=1 exactly: loss and gradients.

Two real gloo processes run megatron-core's tensor-parallel layers; the TP=2 model starts from
the TP=1 model's weights (sharded with megadyt.parallel.tp_shards), so any difference is a bug
in the parallel path: a missing all-reduce of norm-parameter grads under SP shows up as norm
gradients that are half (or a rank's share) of the reference.
"""

from __future__ import annotations

import pytest
import torch
from helpers import SMALL_MODEL, small_config

from megadyt.norms.registry import NORMS as REGISTERED_NORMS
from megadyt.parallel.testing import run_distributed

pytestmark = pytest.mark.multiprocess

NORMS = tuple(REGISTERED_NORMS)

SMALL = [
    *SMALL_MODEL,
    # The tolerances below are absolute float32 rounding at the paper's init. At init 1/sqrt(d)
    # gradients are ~10x larger (embedding grads up to 4) and so is the rounding of the TP
    # split (up to 4e-5), while a parallel-path bug is O(1) either way.
    "model.init_std=0.02",
]


def _config(norm: str, tp: int, sp: bool):
    return small_config([f"model.norm={norm}", f"parallel.tp={tp}", f"parallel.sp={sp}"], SMALL)


def _tokens(seed: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (2, 33), generator=g)


def _step(model, tokens):
    loss = model(tokens[:, :-1].contiguous(), labels=tokens[:, 1:].contiguous()).mean()
    loss.backward()
    return loss.detach()


def _reference(rank: int, world_size: int) -> dict:
    from megadyt.model import build_model, norm_parameter_names
    from megadyt.parallel.distributed import init_distributed, seed_everything

    init_distributed(tp=1)
    out = {}
    for norm in NORMS:
        seed_everything(1234)
        model = build_model(_config(norm, 1, False))
        initial = {n: p.detach().clone() for n, p in model.named_parameters()}
        loss = _step(model, _tokens())
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        out[norm] = {
            "state": initial,
            "loss": loss,
            "grads": grads,
            "norm_names": norm_parameter_names(model),
        }
    return out


def _tensor_parallel(rank: int, world_size: int, states: dict) -> dict:
    from megadyt.model import build_model
    from megadyt.parallel.distributed import init_distributed, seed_everything
    from megadyt.parallel.tp_shards import shard_state_dict, tp_layout

    init_distributed(tp=world_size)
    out = {}
    for norm in NORMS:
        for sp in (False, True):
            seed_everything(99)  # deliberately not the reference seed: weights come from states
            model = build_model(_config(norm, world_size, sp))
            shard = shard_state_dict(states[norm], model, rank, world_size)
            missing, _ = model.load_state_dict(shard, strict=False)
            assert not [k for k in missing if not k.endswith("_extra_state")], missing
            loss = _step(model, _tokens())
            out[norm, sp] = {
                "loss": loss,
                "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
                "layout": tp_layout(model),
                "sp_flags": {
                    n: bool(getattr(p, "sequence_parallel", False))
                    for n, p in model.named_parameters()
                },
            }
    return out


@pytest.fixture(scope="module")
def runs():
    """One TP=1 process for the references, then one pair of TP=2 processes for all cases."""
    reference = run_distributed(_reference, world_size=1)[0]
    states = {norm: reference[norm]["state"] for norm in NORMS}
    ranks = run_distributed(_tensor_parallel, world_size=2, states=states)
    return reference, ranks


@pytest.mark.parametrize("sp", [False, True], ids=["tp2", "tp2-sp"])
@pytest.mark.parametrize("norm", NORMS)
def test_tp2_matches_tp1(runs, norm, sp):
    from megadyt.parallel.tp_shards import merge_tensor

    reference, all_ranks = runs
    ref = reference[norm]
    ranks = [r[norm, sp] for r in all_ranks]
    for r in ranks:
        torch.testing.assert_close(r["loss"], ref["loss"], rtol=1e-5, atol=1e-6)

    layout = ranks[0]["layout"]
    for name, ref_grad in ref["grads"].items():
        split = layout[name]
        if split is None:  # replicated: every rank must hold the full (TP-summed) gradient
            for r in ranks:
                torch.testing.assert_close(
                    r["grads"][name],
                    ref_grad,
                    rtol=1e-4,
                    atol=1e-6,
                    msg=lambda m, n=name: f"{n} (replicated) differs from TP=1: {m}",
                )
        else:
            merged = merge_tensor([r["grads"][name] for r in ranks], *split)
            torch.testing.assert_close(
                merged,
                ref_grad,
                rtol=1e-4,
                atol=1e-6,
                msg=lambda m, n=name: f"{n} (TP-split) differs from TP=1: {m}",
            )

    # Every norm parameter (and the embedding scalar) is tagged for SP exactly when SP is on.
    for name in ref["norm_names"]:
        assert ranks[0]["sp_flags"][name] is sp, name


def test_norm_grads_are_summed_over_tp_under_sp():
    """Under SP each rank sees half the sequence: norm grads must be the TP sum, not one share.

    Directly: a DyT layer fed a different half of the input on each rank has, after backward,
    the gradient of the whole input on both ranks.
    """
    results = run_distributed(_sp_norm_grads, world_size=2)
    full_alpha, full_weight = results[0]["full"]
    for r in results:
        torch.testing.assert_close(r["alpha"], full_alpha, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r["weight"], full_weight, rtol=1e-5, atol=1e-6)
    # The test can fail: a rank's own share differs from the full gradient.
    assert not torch.allclose(results[0]["share_alpha"], full_alpha)


def _sp_norm_grads(rank: int, world_size: int) -> dict:
    from megatron.core.transformer.transformer_config import TransformerConfig

    from megadyt.norms import DyT, dyt
    from megadyt.parallel.distributed import init_distributed

    init_distributed(tp=world_size)
    config = TransformerConfig(
        num_layers=1,
        hidden_size=8,
        num_attention_heads=2,
        tensor_model_parallel_size=world_size,
        sequence_parallel=True,
        use_cpu_initialization=True,
    )
    x = torch.randn(6, 3, 8, generator=torch.Generator().manual_seed(0))
    layer = DyT(config, 8, alpha0=0.7)
    local = x.chunk(world_size, dim=0)[rank]  # [s/tp, b, h]
    layer(local).pow(2).sum().backward()

    alpha = torch.nn.Parameter(torch.tensor([0.7]))
    weight = torch.nn.Parameter(torch.ones(8))
    dyt(x, alpha, weight).pow(2).sum().backward()
    a2 = torch.nn.Parameter(torch.tensor([0.7]))
    dyt(local, a2, torch.ones(8)).pow(2).sum().backward()
    return {
        "alpha": layer.alpha.grad,
        "weight": layer.weight.grad,
        "full": (alpha.grad, weight.grad),
        "share_alpha": a2.grad,
    }
