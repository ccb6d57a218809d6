"""megadyt's rotary function in megatron-core's fused-rotary slot computes exactly what
megatron-core's unfused path computes: the same bits forward and backward, per table and dtype,
a whole model included; layouts it does not cover go to megatron-core's function."""

from __future__ import annotations

import pytest
import torch
from helpers import SMALL_TRAINING
from megatron.core.models.common.embeddings import rope_utils
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

from megadyt.config import load_config
from megadyt.model import build_model, rope
from megadyt.parallel import cpu_shims
from megadyt.parallel.distributed import destroy_distributed, init_distributed, seed_everything


def _freqs(seq: int, dim: int, base: int) -> torch.Tensor:
    """megatron-core's own table ([s, 1, 1, d], fp32, rotate-half layout)."""
    cpu_shims.install()  # megatron-core allocates the positions on "the current CUDA device"
    rotary = RotaryEmbedding(
        kv_channels=dim, rotary_percent=1.0, rotary_base=base, use_cpu_initialization=True
    )
    return rotary(seq)


def _both(t: torch.Tensor, freqs: torch.Tensor, dy: torch.Tensor):
    """(output, input gradient) of rope.rotary and of megatron-core's unfused function."""
    out = []
    for fn in (rope.rotary, rope_utils._apply_rotary_pos_emb_bshd):
        x = t.detach().clone().requires_grad_()
        y = fn(x, freqs)
        y.backward(dy)
        out.append((y.detach(), x.grad))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bitwise_equal_to_megatron_forward_and_backward(dtype):
    g = torch.Generator().manual_seed(0)
    freqs = _freqs(12, 16, 10000)
    t = torch.randn(12, 3, 4, 16, generator=g).to(dtype)
    dy = torch.randn(12, 3, 4, 16, generator=g).to(dtype)
    (y, dx), (want_y, want_dx) = _both(t, freqs, dy)
    assert y.dtype == dtype and torch.equal(y, want_y)
    assert torch.equal(dx, want_dx)
    assert not torch.equal(y, t)  # it rotates something


def test_each_table_gets_its_own_cos_and_sin():
    """Two tables of one shape (say, two models with different RoPE bases in one process)."""
    t = torch.randn(8, 2, 2, 16, generator=torch.Generator().manual_seed(1))
    dy = torch.ones_like(t)
    for base in (10000, 500000, 10000):
        (y, dx), (want_y, want_dx) = _both(t, _freqs(8, 16, base), dy)
        assert torch.equal(y, want_y) and torch.equal(dx, want_dx), base


def test_a_layout_it_does_not_compute_goes_to_megatron():
    """Halves that differ (not rotate-half) and a partial rotary dim: megatron's result."""
    g = torch.Generator().manual_seed(2)
    t = torch.randn(6, 2, 2, 8, generator=g)
    uneven = torch.rand(6, 1, 1, 8, generator=g)
    partial = _freqs(6, 4, 10000)
    for freqs in (uneven, partial):
        want = rope_utils._apply_rotary_pos_emb_bshd(t, freqs)
        assert torch.equal(rope.rotary(t, freqs), want)


def test_the_model_uses_the_slot_and_trains_as_with_megatrons_rotary(monkeypatch):
    """Loss and every gradient of a small model: bitwise those of megatron-core's unfused path
    (apply_rope_fusion off), and rope.rotary really ran."""
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return rope.rotary(*args, **kwargs)

    init_distributed(tp=1)
    try:
        tokens = torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(3))
        results = []
        for fused in (True, False):
            monkeypatch.setattr(rope_utils, "fused_apply_rotary_pos_emb", counted)
            monkeypatch.setattr(rope, "install", lambda fused=fused: fused)
            cfg = load_config(None, [*SMALL_TRAINING, "model.num_query_groups=2"])
            seed_everything(3)
            model = build_model(cfg)
            assert model.config.apply_rope_fusion is fused
            loss = model(tokens[:, :-1].contiguous(), labels=tokens[:, 1:].contiguous()).mean()
            loss.backward()
            results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
        assert len(calls) == 2 * 2  # query and key of 2 layers, in the fused model only
        (loss, grads), (want_loss, want_grads) = results
        assert torch.equal(loss, want_loss)
        assert all(torch.equal(grads[n], want_grads[n]) for n in want_grads)
    finally:
        destroy_distributed()
