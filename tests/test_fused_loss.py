"""The chunked linear + cross-entropy loss (megadyt.model.loss) against megatron-core's path.

The reference is what GPTModel does without it: the output layer's logits (ColumnParallelLinear),
then `tensor_parallel.vocab_parallel_cross_entropy`. Loss, and the gradients of the hidden states
and of the output weight, must agree for an upstream gradient with zeros in it (a loss mask), at
TP=1 in-process and at TP=2 with and without sequence parallelism in two gloo processes. The chunk
floor is lowered so that the small shapes here run several chunks, the last one short.
"""

from __future__ import annotations

import pytest
import torch
from helpers import SMALL_MODEL, small_config

from megadyt.model import loss as fused
from megadyt.parallel.testing import run_distributed

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def test_chunk_size_rule():
    # 4 x 2048 tokens at width 768, vocab 32,000: 16 chunks of 512 (66 MB of fp32 logits each)
    assert fused.chunk_tokens(8192, 768, 32000) == 512
    assert fused.chunk_tokens(8192, 4096, 16000) == 2048  # logits ~ the hidden states' size
    assert fused.chunk_tokens(512, 128, 4096) == 512  # below the floor: one chunk
    assert fused.fused_loss_applies("auto", 8192, 768, 32000)
    assert not fused.fused_loss_applies("auto", 512, 128, 4096)
    assert fused.fused_loss_applies("on", 512, 128, 4096)
    assert not fused.fused_loss_applies("off", 8192, 768, 32000)


def _output_layer(vocab: int, hidden: int, dtype: torch.dtype, sp: bool = False):
    from megatron.core.transformer.transformer_config import TransformerConfig
    from megatron.core.utils import init_method_normal

    config = TransformerConfig(
        num_layers=1, hidden_size=hidden, num_attention_heads=1, params_dtype=dtype,
        use_cpu_initialization=True, sequence_parallel=sp, tensor_model_parallel_size=1,
    )  # fmt: skip
    return fused.LossOutputLayer(
        hidden, vocab, config=config, init_method=init_method_normal(0.5), bias=False,
        gather_output=False, skip_bias_add=False,
    )  # fmt: skip


def _megatron_loss(layer, hidden, labels):
    from megatron.core import tensor_parallel

    logits, _ = layer(hidden)
    return tensor_parallel.vocab_parallel_cross_entropy(logits, labels)


def _loss_and_grads(layer, hidden, labels, upstream, fused_path: bool):
    x = hidden.detach().clone().requires_grad_()
    layer.zero_grad(set_to_none=True)
    loss = layer(x, labels=labels)[0] if fused_path else _megatron_loss(layer, x, labels)
    loss.backward(upstream)
    return loss.detach(), x.grad, layer.weight.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("floor", [1 << 24, 1000], ids=["one-chunk", "chunked"])
def test_equals_megatron_at_tp1(tp1_distributed, monkeypatch, dtype, floor):
    monkeypatch.setattr(fused, "MIN_CHUNK_LOGITS", floor)
    s, b, h, vocab = 23, 3, 32, 300  # 69 tokens: chunks of 8 and a short last one when chunked
    torch.manual_seed(0)
    layer = _output_layer(vocab, h, dtype)
    hidden = torch.randn(s, b, h, dtype=dtype)
    labels = torch.randint(0, vocab, (s, b))
    upstream = (torch.rand(s, b) > 0.3).float() / (s * b)  # a loss mask, then the mean
    chunk = fused.chunk_tokens(s * b, h, vocab)
    assert chunk == (s * b if floor > 1000 else 8)
    ref = _loss_and_grads(layer, hidden, labels, upstream, fused_path=False)
    out = _loss_and_grads(layer, hidden, labels, upstream, fused_path=True)
    for name, a, e in zip(("loss", "d hidden", "d weight"), out, ref, strict=True):
        assert a.dtype == e.dtype, name
        torch.testing.assert_close(a.float(), e.float(), **TOL[dtype], msg=lambda m, n=name: n + m)
    # masked tokens contribute nothing: their hidden-state gradient is exactly zero
    assert (out[1][upstream == 0] == 0).all()


def test_logits_path_is_megatron_s_when_the_loss_is_fused(tp1_distributed):
    """What needs logits (lm-eval, calibration) gets the unfused path whatever fused_loss says."""
    from megadyt.model import build_model
    from megadyt.parallel.distributed import seed_everything

    tokens = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(5))
    outputs = {}
    for setting in ("off", "on"):
        seed_everything(3)
        model = build_model(small_config([f"model.fused_loss={setting}"], SMALL_MODEL))
        with torch.no_grad():
            outputs[setting] = (model(tokens), model(tokens[:, :-1], labels=tokens[:, 1:]))
    assert outputs["on"][0].shape == (2, 32, 256)
    torch.testing.assert_close(outputs["on"][0], outputs["off"][0], rtol=0, atol=0)
    torch.testing.assert_close(outputs["on"][1], outputs["off"][1], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------ TP=2, whole model


def _model_step(setting: str, sp: bool, tokens: torch.Tensor, mask: torch.Tensor):
    from megadyt.model import build_model
    from megadyt.parallel.distributed import seed_everything

    seed_everything(11)  # CPU init draws full weights and slices them: same model both times
    cfg = small_config(
        [f"model.fused_loss={setting}", "parallel.tp=2", f"parallel.sp={sp}",
         "model.init_std=0.02"],
        SMALL_MODEL,
    )  # fmt: skip
    model = build_model(cfg)
    loss = model(tokens[:, :-1].contiguous(), labels=tokens[:, 1:].contiguous())
    ((loss * mask).sum() / mask.sum()).backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _tp2_fused_and_unfused(rank: int, world_size: int) -> dict:
    from megadyt.model import loss as fused_module
    from megadyt.parallel.distributed import init_distributed

    init_distributed(tp=world_size)
    fused_module.MIN_CHUNK_LOGITS = 1  # 96 tokens, vocab shard 128: chunks of 64 and 32
    g = torch.Generator().manual_seed(21)
    tokens = torch.randint(0, 256, (3, 33), generator=g)
    mask = (torch.rand(3, 32, generator=g) > 0.25).float()
    return {
        (setting, sp): _model_step(setting, sp, tokens, mask)
        for sp in (False, True)
        for setting in ("off", "on")
    }


@pytest.mark.multiprocess
def test_equals_megatron_at_tp2_with_and_without_sp():
    ranks = run_distributed(_tp2_fused_and_unfused, world_size=2)
    for rank, out in enumerate(ranks):
        for sp in (False, True):
            ref_loss, ref_grads = out["off", sp]
            loss, grads = out["on", sp]
            torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
            for name, ref in ref_grads.items():
                torch.testing.assert_close(
                    grads[name], ref, rtol=1e-4, atol=1e-6,
                    msg=lambda m, n=f"rank {rank}, sp={sp}: {name}": f"{n}: {m}",
                )  # fmt: skip
    # each rank's output-layer gradient is its own vocabulary slice's
    assert not torch.allclose(
        ranks[0]["on", False][1]["output_layer.weight"],
        ranks[1]["on", False][1]["output_layer.weight"],
    )
