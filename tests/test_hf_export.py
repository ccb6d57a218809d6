"""`megadyt export --format hf`: transformers loads the directory and computes megadyt's logits.

Checked with transformers itself (AutoModelForCausalLM): RMSNorm exports as its own
LlamaForCausalLM, DyT and Derf through the exported modeling file; MHA and GQA; fp32 logits
within 1e-4 of megadyt's. A wrong qkv split is caught, shards and their index are complete, and
bad input is refused by name.
"""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
import transformers
from helpers import ROOT, SMALL_TRAINING

from megadyt.config import load_config
from megadyt.errors import MegadytError
from megadyt.interop import hf_export, hf_layout
from megadyt.model import build_model
from megadyt.parallel.distributed import seed_everything

IDS_ONLY = hf_export.TokenizerSource(None, 1, 2, [])  # BOS/EOS ids for the configs, no files
TOKENS = torch.randint(0, 256, (2, 19), generator=torch.Generator().manual_seed(4))


def _model(norm: str, groups: int):
    """A small megadyt model whose norm parameters and embedding scalar are far from their
    initial values, so a misplaced one changes the logits."""
    cfg = load_config(None, [*SMALL_TRAINING, f"model.norm={norm}",
                             f"model.num_query_groups={groups}"])  # fmt: skip
    seed_everything(1)
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layernorm" in name or "embedding_scale" in name:
                param.mul_(0.5 + torch.rand(param.shape, generator=g))
    return cfg, model


def _export(cfg, model, out, **kwargs):
    state = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    return hf_export.write_hf_export(cfg, state, out, "float32", IDS_ONLY, **kwargs)


def _hf_logits(folder):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=True, dtype=torch.float32
    )
    with torch.no_grad():
        return model, model(input_ids=TOKENS).logits


def _megadyt_logits(model):
    with torch.no_grad():
        return model(TOKENS)


@pytest.mark.parametrize("groups", [4, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("norm", ["rmsnorm", "dyt", "derf"])
def test_transformers_computes_megadyts_logits(tp1_distributed, tmp_path, norm, groups):
    cfg, model = _model(norm, groups)
    summary = _export(cfg, model, tmp_path / "hf")
    hf_model, logits = _hf_logits(tmp_path / "hf")
    want = _megadyt_logits(model)
    assert logits.shape == want.shape
    assert float((logits - want).abs().max()) <= 1e-4
    assert summary.plain_llama == (norm == "rmsnorm")
    custom = (tmp_path / "hf" / "modeling_megadyt.py").exists()
    if norm == "rmsnorm":  # transformers' own class, no code to trust
        assert type(hf_model) is transformers.LlamaForCausalLM and not custom
    else:
        assert type(hf_model).__name__ == "MegadytLlamaForCausalLM" and custom
        assert hf_model.model.embed_tokens.scale.item() == pytest.approx(
            model.embedding.embedding_scale.item()
        )


def test_a_wrong_qkv_split_changes_the_logits(tp1_distributed, tmp_path, monkeypatch):
    """The check above can fail: key and value heads swapped in the split give other logits."""
    cfg, model = _model("dyt", 2)
    right = hf_layout.split_qkv

    def swapped(qkv, m):
        q, k, v = right(qkv, m)
        return q, v, k

    monkeypatch.setattr(hf_layout, "split_qkv", swapped)
    _export(cfg, model, tmp_path / "hf")
    _, logits = _hf_logits(tmp_path / "hf")
    assert float((logits - _megadyt_logits(model)).abs().max()) > 1e-2


def test_shards_and_their_index_hold_every_tensor_once(tp1_distributed, tmp_path):
    cfg, model = _model("derf", 2)
    summary = _export(cfg, model, tmp_path / "hf", shard_bytes=50_000)
    index = json.loads((tmp_path / "hf" / hf_export.INDEX_FILE).read_text())
    files = sorted(set(index["weight_map"].values()))
    assert summary.shards == len(files) > 2
    count = len(files)
    assert files == [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    assert sorted(p.name for p in (tmp_path / "hf").glob("*.safetensors")) == files
    expected = {name for name, _ in hf_layout.hf_tensors(model.state_dict(), cfg.model)}
    assert set(index["weight_map"]) == expected
    _, logits = _hf_logits(tmp_path / "hf")
    assert float((logits - _megadyt_logits(model)).abs().max()) <= 1e-4


def test_every_exported_file_gets_the_mode_of_a_new_file(tp1_distributed, tmp_path):
    """safetensors writes its files 0600; an export is read by others (a shared model
    directory), so its shards get what every other file gets: 0666 less the umask."""
    cfg, model = _model("dyt", 2)
    previous = os.umask(0o022)
    try:
        _export(cfg, model, tmp_path / "hf", shard_bytes=50_000)
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "hf").iterdir()}
    assert any(name.endswith(".safetensors") for name in modes)
    assert set(modes.values()) == {0o644}, modes


def test_bad_input_is_refused_by_name(tp1_distributed, tmp_path):
    cfg, model = _model("dyt", 4)
    state = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    (tmp_path / "taken").mkdir()
    with pytest.raises(MegadytError, match="exists"):
        hf_export.write_hf_export(cfg, state, tmp_path / "taken", "float32", IDS_ONLY)
    missing = dict(state)
    del missing["decoder.layers.1.mlp.linear_fc1.weight"]
    with pytest.raises(MegadytError, match=r"decoder\.layers\.1\.mlp\.linear_fc1\.weight"):
        hf_export.write_hf_export(cfg, missing, tmp_path / "a", "float32", IDS_ONLY)
    extra = {**state, "decoder.layers.0.mystery.weight": torch.zeros(1)}
    with pytest.raises(MegadytError, match=r"mystery"):
        hf_export.write_hf_export(cfg, extra, tmp_path / "b", "float32", IDS_ONLY)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_tokenizer_that_differs_from_sentencepiece_is_refused(tmp_path):
    """A unigram SentencePiece model (the BPE conversion does not reproduce it) is refused and
    nothing is written; and the text check can fail: without the prepended word-start marker,
    the built-in tokenizer differs on text without leading spaces."""
    import sentencepiece as spm

    from megadyt.data.builtin import heldout_texts, tokenizer_model_path
    from megadyt.interop import hf_tokenizer

    lines = [line for line in heldout_texts(str(ROOT / "data_cache")) if len(line) > 10][:3000]
    model = tmp_path / "unigram.model"
    with open(model, "wb") as writer:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=writer, model_type="unigram",
            vocab_size=400, byte_fallback=True, minloglevel=2,
        )  # fmt: skip
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(MegadytError, match="not an identity-normalised BPE model"):
        hf_tokenizer.write_tokenizer_files(folder, str(model), lines, 64)
    assert list(folder.iterdir()) == []

    builtin = tokenizer_model_path("builtin:stdlib", str(ROOT / "data_cache"))
    tokenizer = hf_tokenizer.build_hf_tokenizer(builtin)
    processor = spm.SentencePieceProcessor(model_file=builtin)
    assert hf_tokenizer.first_difference(tokenizer, processor, lines) is None
    from tokenizers import normalizers

    tokenizer.normalizer = normalizers.Replace(" ", hf_tokenizer.WORD_START)
    found = hf_tokenizer.first_difference(tokenizer, processor, ["x = 1", "    return x"])
    assert found is not None and found.startswith("'x = 1'")
