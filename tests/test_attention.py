"""SDPA core attention computes what megatron-core's local DotProductAttention computes.

Same inputs through both classes (MHA, GQA, MQA): outputs and input gradients agree; the cases
SDPA's causal mode cannot express (a query shorter than its keys, as in KV-cache decoding) go to
megatron's class; a whole model gives the same loss and gradients with either implementation.
"""

from __future__ import annotations

import pytest
import torch
from helpers import SMALL_TRAINING  # 2 layers, width 64, 4 heads (later --set values win)
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType

from megadyt.config import load_config
from megadyt.model import build_model
from megadyt.model.attention import SdpaDotProductAttention
from megadyt.model.llama import transformer_config
from megadyt.parallel.distributed import destroy_distributed, init_distributed, seed_everything


@pytest.fixture(scope="module")
def distributed():
    init_distributed(tp=1)
    seed_everything(0)  # megatron's attention forks the model-parallel RNG for dropout
    yield
    destroy_distributed()


def _pair(groups: int):
    cfg = load_config(None, [*SMALL_TRAINING, f"model.num_query_groups={groups}"])
    tc = transformer_config(cfg)
    kwargs = {"layer_number": 1, "attn_mask_type": AttnMaskType.causal, "attention_type": "self"}
    return SdpaDotProductAttention(tc, **kwargs), DotProductAttention(tc, **kwargs)


def _inputs(seq_q: int, seq_k: int, groups: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(seq_q, 3, 4, 16, generator=g, requires_grad=True)
    key = torch.randn(seq_k, 3, groups, 16, generator=g, requires_grad=True)
    value = torch.randn(seq_k, 3, groups, 16, generator=g, requires_grad=True)
    return query, key, value


def _mask(seq_q: int, seq_k: int) -> torch.Tensor:
    """megatron's convention: True is masked; the last query sees every key."""
    full = torch.ones(seq_k, seq_k, dtype=torch.bool).triu(diagonal=1)
    return full[seq_k - seq_q :][None, None]


def _run(module, query, key, value, mask):
    q, k, v = (t.detach().clone().requires_grad_() for t in (query, key, value))
    out = module(q, k, v, mask)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), [t.grad for t in (q, k, v)]


@pytest.mark.parametrize("groups", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_sdpa_matches_megatron_local_attention(distributed, groups):
    sdpa, local = _pair(groups)
    query, key, value = _inputs(24, 24, groups)
    out, grads = _run(sdpa, query, key, value, _mask(24, 24))
    want, want_grads = _run(local, query, key, value, _mask(24, 24))
    assert out.shape == (24, 3, 64)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    for got, ref in zip(grads, want_grads):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_query_shorter_than_keys_goes_to_megatron(distributed):
    """SDPA's is_causal aligns the mask top-left; decoding needs it bottom-right."""
    sdpa, local = _pair(2)
    query, key, value = _inputs(1, 9, 2)
    out, _ = _run(sdpa, query, key, value, _mask(1, 9))
    want, _ = _run(local, query, key, value, _mask(1, 9))
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)


def _loss_and_grads(attention_impl: str, tokens: torch.Tensor):
    cfg = load_config(
        None,
        [*SMALL_TRAINING, "model.num_query_groups=2", f"model.attention_impl={attention_impl}"],
    )
    seed_everything(3)
    model = build_model(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one summation order, whatever else runs on the machine
    try:
        loss = model(tokens[:, :-1].contiguous(), labels=tokens[:, 1:].contiguous()).mean()
        loss.backward()
    finally:
        torch.set_num_threads(threads)
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def test_model_loss_and_grads_same_with_either_attention(distributed):
    tokens = torch.randint(0, 256, (2, 33), generator=torch.Generator().manual_seed(5))
    loss, grads = _loss_and_grads("sdpa", tokens)
    want_loss, want_grads = _loss_and_grads("local", tokens)
    torch.testing.assert_close(loss, want_loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == want_grads.keys()
    for name in grads:
        # float32 rounding scales with the gradient (embedding grads reach 4 at init 1/sqrt(d)):
        # an absolute floor of 1e-5 of each tensor's largest entry, any bug is O(1) of it. A
        # scalar's gradient (α, the embedding scale) is one sum over a whole activation, with
        # cancellation: its rounding is relative to the terms, not the result: 1e-3 of it.
        want = want_grads[name]
        scale = float(want.abs().max())
        rtol = 1e-3 if want.numel() == 1 else 1e-4
        torch.testing.assert_close(
            grads[name], want, rtol=rtol, atol=max(1e-6, 1e-5 * scale),
            msg=lambda m, n=name: f"{n}: {m}",
        )  # fmt: skip
