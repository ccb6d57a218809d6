"""What a zero-shot evaluation costs: requests, tokens and time of lm-eval on the paper's tasks.

lm-eval scores a multiple-choice document as one request per answer choice, and `MegadytLM`
runs each request as one row of a forward (no shared-prefix cache), padded to a multiple of 16
tokens. So an evaluation forwards about `documents × choices × (tokens per request + 8)`
tokens, at one third of training's FLOPs per token (forward only), on the TP group of rank 0
(the other ranks wait, or under ZeRO-3 run the same forwards beside it).

`TASK_SIZES` holds, per task, the documents of the split lm-eval scores (from the datasets), the
mean answer choices per document, and an *estimate* of the mean tokens of one request with the
LLaMA-2 tokenizer (prompt + document + one choice, from the datasets' typical lengths; not
measured here, where no dataset can be downloaded). The times assume the plan's MFU; lm-eval's
own Python work and small batches make real evaluations slower, so read them as lower bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

from megadyt.config.schema import Config
from megadyt.model.flops import flops_per_token

PADDING_TOKENS = 8  # rows are padded to a multiple of 16 tokens: half of that on average


@dataclass(frozen=True)
class TaskSize:
    documents: int  # in the split lm-eval scores
    choices: float  # requests per document (its answer choices), on average
    tokens: int  # mean tokens of one request (context + choice), LLaMA-2 tokenizer, estimated


TASK_SIZES = {
    "anli_r1": TaskSize(1000, 3, 90),
    "anli_r2": TaskSize(1000, 3, 90),
    "anli_r3": TaskSize(1200, 3, 90),
    "arc_challenge": TaskSize(1172, 4, 55),
    "arc_easy": TaskSize(2376, 4, 50),
    "boolq": TaskSize(3270, 2, 170),
    "hellaswag": TaskSize(10042, 4, 110),
    "openbookqa": TaskSize(500, 4, 35),
    "piqa": TaskSize(1838, 2, 55),
    "record": TaskSize(10000, 14, 280),
    "rte": TaskSize(277, 2, 80),
    "truthfulqa_mc1": TaskSize(817, 5, 230),
    "truthfulqa_mc2": TaskSize(817, 7, 230),
    "wic": TaskSize(638, 2, 45),
    "winogrande": TaskSize(1267, 2, 35),
}


@dataclass(frozen=True)
class ZeroShotCost:
    tasks: list[str]
    limit: int | None  # documents per task; None: all
    requests: int
    tokens: int
    seconds: float  # lower bound at the plan's MFU on rank 0's TP group
    unknown: list[str]  # tasks without a size estimate (not counted)

    def as_dict(self) -> dict:
        return self.__dict__ | {"tasks": list(self.tasks), "unknown": list(self.unknown)}


def zero_shot_cost(
    cfg: Config, tasks: list[str], limit: int | None, peak_tflops: float, mfu: float
) -> ZeroShotCost:
    """The cost of one evaluation of task names `tasks` (suites expanded) at `limit` documents
    per task, at the config's TP."""
    requests = tokens = 0
    for name in tasks:
        size = TASK_SIZES.get(name)
        if size is None:
            continue
        documents = size.documents if limit is None else min(limit, size.documents)
        rows = documents * size.choices
        requests += round(rows)
        tokens += round(rows * (size.tokens + PADDING_TOKENS))
    forward_flops = flops_per_token(cfg.model) / 3
    seconds = tokens * forward_flops / (cfg.parallel.tp * peak_tflops * 1e12 * mfu)
    unknown = [name for name in tasks if name not in TASK_SIZES]
    return ZeroShotCost(list(tasks), limit, requests, tokens, seconds, unknown)
