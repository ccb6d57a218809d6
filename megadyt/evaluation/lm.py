"""lm-eval model `megadyt`: scores megadyt checkpoints (or an in-memory model, at any TP).

Importing this module registers the class with lm-eval's model registry, so afterwards
`lm_eval.simple_evaluate(model="megadyt", model_args="checkpoint=RUN_DIR")` works. lm-eval has no
plugin entry point for models, so its own `lm_eval` command only knows `megadyt` when this module
was imported first; use `megadyt eval` or, for lm-eval's CLI,

    python -c "import megadyt.evaluation.lm, sys; from lm_eval.__main__ import cli_evaluate; \\
        sys.argv[0] = 'lm_eval'; cli_evaluate()" --model megadyt --model_args checkpoint=DIR ...

Any checkpoint layout loads on one device: TP shards are merged by `load_tp1_weights`. A model
too large for one device is evaluated across N tensor-parallel processes (`megadyt eval --tp N`
under torchrun; in a TP=N process group this class loads each rank's own shard): TP rank 0 runs
lm-eval, the other ranks call `follow()` and run the same forwards until rank 0 calls
`release()` (`evaluation.tp_forward`). Requests are sorted by length and
batched; inputs are right-padded, which a causal model cannot see. Documents are preceded by
the tokenizer's eos, as in training (every document there ends with eos).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import lm_eval.models  # noqa: F401  (registers lm-eval's own names before ours)
import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from megadyt.config import Config
from megadyt.data.tokenizer import Tokenizer
from megadyt.errors import MegadytError
from megadyt.evaluation.loading import load_checkpoint_model, resolve_device, tokenizer_for
from megadyt.evaluation.tp_forward import TPForward

PAD_MULTIPLE = 16  # batch lengths are rounded up to this (fewer distinct causal-mask shapes)


@register_model("megadyt")
class MegadytLM(TemplateLM):
    """lm-eval model over a megadyt LLaMA.

    model_args: checkpoint=DIR (run dir, its checkpoints/ dir, or a step_* dir), device
    (cpu/cuda/auto), batch_size (int), max_length (default: the model's seq_length),
    dtype (auto: bfloat16 on CUDA, float32 on CPU; float32/bfloat16/float16), max_gen_toks
    (default 256). In a TP=N process group it loads this rank's shard (see the module doc).
    In Python, `model=` and `cfg=` score an in-memory model instead, through `forward=` when
    given (a `TPForward`; training passes `TPForward.for_training`).
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        device: str | None = None,
        batch_size: int | str | None = 8,
        max_length: int | None = None,
        dtype: str = "auto",
        max_gen_toks: int = 256,
        verify: bool = True,
        *,
        model: torch.nn.Module | None = None,
        cfg: Config | None = None,
        tokenizer: Tokenizer | None = None,
        forward: TPForward | None = None,
        **_ignored: Any,
    ) -> None:
        super().__init__()
        if model is None:
            if not checkpoint:
                raise MegadytError("model `megadyt` needs model_args checkpoint=DIR")
            if dtype == "auto":  # bf16 where it is fast (CUDA), fp32 on CPU
                dtype = "bfloat16" if resolve_device(device).type == "cuda" else "float32"
            torch_dtype = {
                "float32": torch.float32,
                "bfloat16": torch.bfloat16,
                "float16": torch.float16,
            }.get(str(dtype))
            if torch_dtype is None:
                raise MegadytError(f"dtype {dtype!r}: use float32, bfloat16 or float16")
            model, cfg = load_checkpoint_model(checkpoint, device, torch_dtype, verify=verify)
        elif cfg is None:
            raise MegadytError("MegadytLM(model=...) also needs cfg=")
        self.model = model
        self.cfg = cfg
        self.forward = forward or TPForward(model, next(model.parameters()).device)
        # sequence parallelism splits each batch's length over the TP ranks
        self.pad_multiple = math.lcm(PAD_MULTIPLE, self.forward.tp)
        self.tok = tokenizer or tokenizer_for(cfg)
        self._device = next(model.parameters()).device
        if batch_size in (None, "auto") or str(batch_size).startswith("auto"):
            batch_size = 8
        self.batch_size = max(1, int(batch_size))
        self.max_length = int(max_length or cfg.model.seq_length)
        self.max_gen_toks = int(max_gen_toks)

    @property
    def leads(self) -> bool:
        """Whether this process runs lm-eval (TP rank 0; always, at TP=1)."""
        return self.forward.leads

    def follow(self) -> None:
        """TP ranks other than 0: serve rank 0's forwards until it calls release()."""
        self.forward.follow()

    def release(self) -> None:
        """TP rank 0, when done: let the other ranks' follow() return."""
        self.forward.release()

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        from lm_eval.utils import simple_parse_args_string

        args = simple_parse_args_string(arg_string)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**{**extra, **args})

    # ---------------------------------------------------------------- tokenizer interface
    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return self.tok.model_path

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kw) -> list[int]:
        return self.tok.encode(string)

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.tok.decode(tokens)

    # ---------------------------------------------------------------- model calls
    @torch.no_grad()
    def _logits(self, rows: list[list[int]]) -> torch.Tensor:
        """float32 log-probs [b, s, V] for right-padded rows (s = longest row, rounded up)."""
        longest = max(len(r) for r in rows)
        width = -(-longest // self.pad_multiple) * self.pad_multiple
        width = min(width, max(self.max_length, longest))
        batch = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            batch[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        was_training = self.model.training
        self.model.eval()
        try:
            logits = self.forward(batch.to(self.device))
        finally:
            self.model.train(was_training)
        if logits.shape[-1] != self.cfg.model.vocab_size:
            raise MegadytError(
                f"model returned {logits.shape[-1]} of {self.cfg.model.vocab_size} vocabulary "
                "logits: a TP model must be called through TPForward"
            )
        return F.log_softmax(logits.float(), dim=-1)

    def _batches(self, items: list, length: Callable[[Any], int]):
        """Indices sorted by descending length, in chunks of batch_size."""
        order = sorted(range(len(items)), key=lambda i: -length(items[i]))
        for start in range(0, len(order), self.batch_size):
            yield order[start : start + self.batch_size]

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        """(context tokens, continuation tokens) -> (sum log p(continuation), all greedy)."""
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        inputs = []
        for _, context_enc, continuation_enc in requests:
            if not continuation_enc:
                inputs.append(([], 0))
                continue
            whole = (context_enc + continuation_enc)[-(self.max_length + 1) :]
            inputs.append((whole[:-1], len(continuation_enc)))
        for chunk in self._batches(inputs, lambda x: len(x[0])):
            todo = [i for i in chunk if inputs[i][1] > 0]
            for i in chunk:
                if inputs[i][1] == 0:
                    results[i] = (0.0, True)
            if not todo:
                continue
            logprobs = self._logits([inputs[i][0] for i in todo])
            for row, i in enumerate(todo):
                tokens, n = inputs[i]
                _, _, continuation_enc = requests[i]
                target = torch.tensor(continuation_enc[-n:], device=logprobs.device)
                scores = logprobs[row, len(tokens) - n : len(tokens)]
                picked = scores.gather(1, target[:, None]).squeeze(1)
                greedy = bool((scores.argmax(dim=-1) == target).all())
                results[i] = (float(picked.sum()), greedy)
                self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-document log-likelihood: windows of max_length tokens, each token scored once,
        every window after the first with the most context the length allows."""
        windows, owner = [], []
        for doc_index, request in enumerate(requests):
            (text,) = request.args
            for pair in get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            ):
                context, continuation = make_disjoint_window(pair)
                windows.append(((None, None), context, continuation))
                owner.append(doc_index)
        totals = [0.0] * len(requests)
        for doc_index, (logprob, _) in zip(owner, self._loglikelihood_tokens(windows)):
            totals[doc_index] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy decoding until a stop string, eos, or max_gen_toks new tokens."""
        jobs = []
        for request in requests:
            context, gen_kwargs = request.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None) or []
            if isinstance(until, str):
                until = [until]
            max_new = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
            context_enc = self.tok_encode(context) if context else [self.prefix_token_id]
            jobs.append((context_enc, list(until), max_new))
        outputs: list[str | None] = [None] * len(jobs)
        vocab = self.tok.vocab_size
        for chunk in self._batches(jobs, lambda job: len(job[0])):
            seqs = [list(jobs[i][0]) for i in chunk]
            new = [[] for _ in chunk]
            done = [jobs[i][2] <= 0 for i in chunk]
            while not all(done):
                live = [k for k in range(len(chunk)) if not done[k]]
                rows = [seqs[k][-self.max_length :] for k in live]
                logprobs = self._logits(rows)
                for row, k in enumerate(live):
                    next_id = int(logprobs[row, len(rows[row]) - 1, :vocab].argmax())
                    if next_id == self.eot_token_id:
                        done[k] = True
                        continue
                    seqs[k].append(next_id)
                    new[k].append(next_id)
                    context_enc, until, max_new = jobs[chunk[k]]
                    text = self._continuation_text(context_enc, new[k])
                    if len(new[k]) >= max_new or any(s and s in text for s in until):
                        done[k] = True
            for k, i in enumerate(chunk):
                context_enc, until, _ = jobs[i]
                text = self._continuation_text(context_enc, new[k])
                for stop in until:
                    if stop:
                        text = text.split(stop)[0]
                outputs[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return outputs

    def _continuation_text(self, context_enc: list[int], new: list[int]) -> str:
        """The decoded text the new tokens add after the context (keeps their leading space)."""
        if not new:
            return ""
        head = self.tok_decode(context_enc)
        whole = self.tok_decode(context_enc + new)
        return whole[len(head) :] if whole.startswith(head) else self.tok_decode(new)
