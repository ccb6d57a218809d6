"""The copying probe (megadyt.evaluation.copying): its two losses against cross-entropy computed
directly from the model's logits, and its refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import SMALL_MODEL, TokenSource, small_config

from megadyt.errors import MegadytError
from megadyt.evaluation.copying import SKIP, copying_score, held_out_chunks
from megadyt.model.llama import build_model
from megadyt.parallel.distributed import seed_everything


@pytest.fixture()
def model(tp1_distributed):
    seed_everything(3)
    built = build_model(small_config([*SMALL_MODEL, "model.norm=dyt"]))
    return built.eval()


def test_the_first_reading_is_the_chunk_alone_and_the_repeat_its_second_copy(model):
    chunks = torch.randint(0, 256, (3, 14), generator=torch.Generator().manual_seed(0))
    score = copying_score(model, chunks, seq_length=32)

    with torch.no_grad():
        alone = model(chunks).float()  # no second copy at all: causal attention
        doubled = model(torch.cat([chunks, chunks], 1)).float()
    length = chunks.shape[1]
    # logits at position p predict token p + 1; score tokens SKIP.. of each copy
    first = F.cross_entropy(alone[:, SKIP - 1 : -1].flatten(0, 1), chunks[:, SKIP:].flatten())
    second = F.cross_entropy(
        doubled[:, length + SKIP - 1 : -1].flatten(0, 1), chunks[:, SKIP:].flatten()
    )
    assert score.first == pytest.approx(first.item(), rel=1e-5)
    assert score.repeat == pytest.approx(second.item(), rel=1e-5)
    assert score.gain == pytest.approx(first.item() - second.item(), rel=1e-4, abs=1e-6)
    assert score.as_dict()["gain"] == score.gain


def test_chunks_that_do_not_fit_twice_are_refused_naming_the_limit(model):
    with pytest.raises(MegadytError, match="use 12 to 16 tokens"):
        copying_score(model, torch.zeros(2, 17, dtype=torch.long), seq_length=32)
    with pytest.raises(MegadytError, match="do not fit"):
        copying_score(model, torch.zeros(2, SKIP + 1, dtype=torch.long), seq_length=32)


def test_held_out_chunks_are_the_first_tokens_of_the_first_samples():
    valid = TokenSource(6, 32, seed=1)
    chunks = held_out_chunks(valid, count=4, length=20)
    assert chunks.shape == (4, 20)
    for i in range(4):
        assert torch.equal(chunks[i], valid[i]["tokens"][:20])
    with pytest.raises(MegadytError, match="validation split has 6 samples"):
        held_out_chunks(valid, count=7, length=20)
