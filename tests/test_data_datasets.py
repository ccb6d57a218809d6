"""build_datasets: megatron-core's blended GPTDataset over our prefixes, deterministic by seed."""

from __future__ import annotations

import json
import random
import socket

import pytest
import torch
import torch.distributed as dist

from megadyt.config.schema import Config
from megadyt.data.datasets import build_datasets
from megadyt.data.prepare import prepare_data
from megadyt.data.spm import train_sentencepiece
from megadyt.data.tokenizer import load_tokenizer
from megadyt.errors import MegadytError

SEQ = 32


def _text(i: int, tag: str) -> str:
    return f"{tag} document {i}: " + " ".join(
        f"word{(i * 13 + k) % 97}" for k in range(20 + i % 30)
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dsets")
    texts = {tag: [_text(i, tag) for i in range(200)] for tag in ("red", "blue")}
    model = train_sentencepiece(texts["red"] + texts["blue"], 300, str(root / "tok.model"))
    rng = random.Random(0)
    varied = [
        " ".join(
            "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9)))
            for _ in range(50)
        )
        for _ in range(300)
    ]
    big = train_sentencepiece(varied + texts["red"], 700, str(root / "big.model"))
    prefixes = {}
    for tag, docs in texts.items():
        shard = root / f"{tag}.jsonl"
        shard.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
        prefixes[tag] = str(root / tag)
        prepare_data([str(shard)], model, prefixes[tag], progress=False)
    prefixes["big"] = str(root / "big_ids")
    prepare_data([str(root / "red.jsonl")], big, prefixes["big"], progress=False)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield root, model, big, prefixes
    dist.destroy_process_group()


def _cfg(root, model, prefixes, weights=None, seed=1234, cache="cache") -> Config:
    cfg = Config()
    cfg.model.seq_length = SEQ
    cfg.model.vocab_size = 512
    cfg.train.seed = seed
    cfg.data.prefixes = prefixes
    cfg.data.weights = weights
    cfg.data.tokenizer = model
    cfg.data.split = "90,5,5"
    cfg.data.cache_dir = str(root / cache)
    return cfg


def _samples(ds, n=12):
    return torch.stack([ds[i]["tokens"] for i in range(n)])


def test_items_and_contents(setup):
    root, model, _, prefixes = setup
    tok = load_tokenizer(model)
    train, valid, test = build_datasets(_cfg(root, model, [prefixes["red"]]), tok, (50, 10, 10))
    assert len(train) >= 50 and len(valid) >= 10 and len(test) >= 10
    item = train[3]
    assert item["tokens"].shape == item["labels"].shape == (SEQ,)
    assert item["tokens"].dtype == item["labels"].dtype == torch.int64
    assert item["loss_mask"].dtype == torch.float32 and item["loss_mask"].shape == (SEQ,)
    assert torch.equal(item["tokens"][1:], item["labels"][:-1])  # labels are shifted tokens
    assert bool((item["loss_mask"] == 1).all())
    text = tok.decode(item["tokens"].tolist())
    assert "red document" in text or "word" in text


def test_same_seed_same_samples(setup):
    root, model, _, prefixes = setup
    tok = load_tokenizer(model)
    blend = [prefixes["red"], prefixes["blue"]]
    a, _, _ = build_datasets(_cfg(root, model, blend, [0.3, 0.7], cache="c1"), tok, (80, 8, 0))
    b, _, _ = build_datasets(_cfg(root, model, blend, [0.3, 0.7], cache="c2"), tok, (80, 8, 0))
    c, _, _ = build_datasets(_cfg(root, model, blend, [0.3, 0.7], cache="c1"), tok, (80, 8, 0))
    other, _, _ = build_datasets(
        _cfg(root, model, blend, [0.3, 0.7], seed=99, cache="c3"), tok, (80, 8, 0)
    )
    assert torch.equal(_samples(a), _samples(b))  # rebuilt from scratch
    assert torch.equal(_samples(a), _samples(c))  # from megatron-core's index cache
    assert not torch.equal(_samples(a), _samples(other))
    # both sources are drawn from, roughly by weight
    decoded = [tok.decode(a[i]["tokens"].tolist()) for i in range(80)]
    blue = sum("blue" in t for t in decoded)
    red = sum("red" in t for t in decoded)
    assert blue > red > 0


def test_valid_seed_pins_the_validation_samples(setup):
    """Two training seeds draw other validation samples, unless data.valid_seed pins them;
    the training samples still follow train.seed."""
    root, model, _, prefixes = setup
    tok = load_tokenizer(model)
    runs = {}
    for seed, valid_seed in ((1, None), (2, None), (1, 7), (2, 7)):
        cfg = _cfg(root, model, [prefixes["red"]], seed=seed, cache="cv")
        cfg.data.valid_seed = valid_seed
        runs[seed, valid_seed] = build_datasets(cfg, tok, (40, 12, 0))[:2]
    assert not torch.equal(_samples(runs[1, None][1]), _samples(runs[2, None][1]))
    assert torch.equal(_samples(runs[1, 7][1]), _samples(runs[2, 7][1]))
    assert not torch.equal(_samples(runs[1, 7][1]), _samples(runs[1, None][1]))
    assert torch.equal(_samples(runs[1, 7][0]), _samples(runs[1, None][0]))
    assert not torch.equal(_samples(runs[1, 7][0]), _samples(runs[2, 7][0]))


def test_vocab_larger_than_model(setup):
    root, model, big, prefixes = setup
    cfg = _cfg(root, big, [prefixes["big"]])
    with pytest.raises(MegadytError) as info:
        build_datasets(cfg, load_tokenizer(big), (10, 2, 2))
    message = str(info.value)
    assert "model.vocab_size (512)" in message and "data.tokenizer" in message
    assert "(700" in message


def test_token_ids_beyond_vocab(setup):
    root, model, _, prefixes = setup
    cfg = _cfg(root, model, [prefixes["red"], prefixes["big"]], [0.5, 0.5])
    with pytest.raises(MegadytError, match="big_ids.*contains token id .*different tokenizer"):
        build_datasets(cfg, load_tokenizer(model), (10, 2, 2))


def test_missing_prefix_and_bad_weights(setup):
    root, model, _, prefixes = setup
    tok = load_tokenizer(model)
    missing = str(root / "nowhere" / "data")
    with pytest.raises(MegadytError, match="nowhere/data.*prepare-data"):
        build_datasets(_cfg(root, model, [prefixes["red"], missing]), tok, (10, 2, 2))
    with pytest.raises(MegadytError, match="data.weights has 1 entries"):
        build_datasets(
            _cfg(root, model, [prefixes["red"], prefixes["blue"]], [1.0]), tok, (8, 2, 2)
        )
