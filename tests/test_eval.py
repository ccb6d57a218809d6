"""The lm-eval model `megadyt`, the offline tasks, `megadyt eval` and `evaluate_model`.

One tiny DyT checkpoint is trained (in a subprocess, on the built-in corpus) and shared; every
score is checked against a direct computation from the model's own logits.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import ROOT, clean_env, run_cli, train_tiny

LONG_TEXT = (ROOT / "megadyt" / "evaluation" / "lm.py").read_text()[:2500]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("eval") / "dyt")


@pytest.fixture(scope="module")
def lm(run_dir):
    from megadyt.evaluation.lm import MegadytLM

    return MegadytLM(checkpoint=str(run_dir), batch_size=3)


def instance(kind: str, args: tuple, idx: int = 0):
    from lm_eval.api.instance import Instance

    return Instance(kind, {}, args, idx)


@torch.no_grad()
def direct_logprobs(lm, tokens: list[int]) -> torch.Tensor:
    """[len-1] log p(tokens[i+1] | tokens[:i+1]) from one unpadded forward."""
    logits = lm.model(torch.tensor([tokens], device=lm.device))[0].float()
    logprobs = F.log_softmax(logits, dim=-1)
    return logprobs[:-1].gather(1, torch.tensor(tokens[1:], device=lm.device)[:, None])[:, 0]


def test_registered_under_megadyt_on_import():
    from lm_eval.api.registry import get_model

    from megadyt.evaluation.lm import MegadytLM

    assert get_model("megadyt") is MegadytLM


def test_loglikelihood_is_the_sum_of_direct_token_logprobs(lm):
    pairs = [
        ("def area(self):\n", "    return self.width * self.height"),
        ("Return the number of", " items in the queue."),
        ("x", " = 1"),
        ("", "import os"),  # empty context: conditioned on eos
    ]
    got = lm.loglikelihood([instance("loglikelihood", p, i) for i, p in enumerate(pairs)])
    for (context, continuation), (logprob, greedy) in zip(pairs, got):
        # lm-eval's rule: trailing whitespace of the context belongs to the continuation
        context_ids = lm.tok.encode(context.rstrip()) if context else [lm.tok.eos_id]
        tokens = (
            lm.tok.encode(context + continuation)
            if context
            else [lm.tok.eos_id, *lm.tok.encode(continuation)]
        )
        direct = direct_logprobs(lm, tokens)[len(context_ids) - 1 :]
        assert len(direct) >= 1
        assert logprob == pytest.approx(direct.sum().item(), abs=1e-3)
        assert isinstance(greedy, bool)


def _greedy_continuation(lm, context: str, n: int = 3) -> str | None:
    """The model's own n argmax tokens after `context`, as text; None when that text does not
    tokenize back to the same tokens (then lm-eval would score other tokens)."""
    tokens = lm.tok.encode(context)
    for _ in range(n):
        logits = lm.model(torch.tensor([tokens], device=lm.device))[0, -1, : lm.tok.vocab_size]
        tokens.append(int(logits.argmax()))
    continuation = lm.tok.decode(tokens)[len(lm.tok.decode(tokens[:-n])) :]
    return continuation if lm.tok.encode(context + continuation) == tokens else None


def test_greedy_flag_is_true_for_the_models_own_argmax(lm):
    contexts = ["def __init__(self", "import os\nimport", "return self.", "class Queue:\n    def"]
    checked = 0
    for context in contexts:
        continuation = _greedy_continuation(lm, context)
        if continuation is None:
            continue  # another context: some argmax tokens are not what the text tokenizes to
        ((_, greedy),) = lm.loglikelihood([instance("loglikelihood", (context, continuation))])
        assert greedy, (context, continuation)
        checked += 1
    assert checked >= 1  # at least one context round-trips
    # and a continuation the model would not produce is not greedy
    ((_, greedy),) = lm.loglikelihood([instance("loglikelihood", ("def __init__(self", " zzz"))])
    assert not greedy


def test_rolling_loglikelihood_scores_each_token_once_in_windows(lm):
    tokens = lm.tok.encode(LONG_TEXT)
    n, window = len(tokens), lm.max_length
    assert n > 3 * window  # several windows, the last one partial
    full = [lm.tok.eos_id, *tokens]  # full[j] predicts tokens[j]
    expected, scored = 0.0, 0
    for start in range(0, n, window):
        end = min(start + window, n)
        lo = max(0, end - window)  # the last window gets a full context
        logprobs = direct_logprobs(lm, full[lo : end + 1])  # predicts tokens[lo:end]
        expected += logprobs[start - lo : end - lo].sum().item()
        scored += end - start
    assert scored == n
    (got,) = lm.loglikelihood_rolling([instance("loglikelihood_rolling", (LONG_TEXT,))])
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-2)
    # batching must not change the result: same document among shorter ones
    docs = [LONG_TEXT[:100], LONG_TEXT, LONG_TEXT[:700]]
    batch = lm.loglikelihood_rolling(
        [instance("loglikelihood_rolling", (d,), i) for i, d in enumerate(docs)]
    )
    assert batch[1] == pytest.approx(expected, rel=1e-5, abs=1e-2)


@torch.no_grad()
def direct_greedy(lm, context: str, steps: int) -> list[int]:
    tokens = lm.tok.encode(context)
    new = []
    for _ in range(steps):
        logits = lm.model(torch.tensor([tokens[-lm.max_length :]], device=lm.device))
        next_id = int(logits[0, -1, : lm.tok.vocab_size].argmax())
        if next_id == lm.tok.eos_id:
            break
        tokens.append(next_id)
        new.append(next_id)
    return new


def test_generate_until_is_greedy_and_honours_max_tokens_and_stops(lm):
    contexts = ["def __init__(self, name", "import os\nimport sys\n", "Return the"]
    results = lm.generate_until(
        [
            instance("generate_until", (c, {"until": [], "max_gen_toks": 8}), i)
            for i, c in enumerate(contexts)
        ]
    )
    for context, text in zip(contexts, results):
        new = direct_greedy(lm, context, 8)
        ids = lm.tok.encode(context)
        assert text == lm.tok.decode(ids + new)[len(lm.tok.decode(ids)) :]
    # a stop string taken from the middle of the unconstrained output cuts it there
    text = results[0]
    assert len(text) >= 3, text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    (cut,) = lm.generate_until([instance("generate_until", (contexts[0], {"until": [stop]}))])
    assert cut == text.split(stop)[0]


def offline_docs(task: str, n: int) -> list[dict]:
    from megadyt.evaluation.offline import build_task_data

    with open(build_task_data(task)) as handle:
        return [json.loads(line) for line, _ in zip(handle, range(n))]


def direct_nextline_accuracy(lm, docs: list[dict]) -> float:
    correct = 0
    for doc in docs:
        scores = lm.loglikelihood(
            [
                instance("loglikelihood", (doc["context"], c), i)
                for i, c in enumerate(doc["choices"])
            ]
        )
        correct += max(range(4), key=lambda i: scores[i][0]) == doc["label"]
    return correct / len(docs)


def test_offline_tasks_through_simple_evaluate(run_dir, lm):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from megadyt.evaluation.offline import TASKS_DIR

    limit = 12
    results = lm_eval.simple_evaluate(
        model="megadyt",
        model_args=f"checkpoint={run_dir},batch_size=4",
        tasks=["stdlib_nextline", "stdlib_heldout_ppl"],
        task_manager=TaskManager(include_path=str(TASKS_DIR)),
        limit=limit,
        bootstrap_iters=0,
        log_samples=False,
    )["results"]
    docs = offline_docs("stdlib_nextline", limit)
    assert len({d["context"] for d in docs}) == limit
    assert results["stdlib_nextline"]["acc,none"] == pytest.approx(
        direct_nextline_accuracy(lm, docs)
    )
    texts = [d["text"] for d in offline_docs("stdlib_heldout_ppl", limit)]
    total = sum(
        lm.loglikelihood_rolling([instance("loglikelihood_rolling", (t,), i)])[0]
        for i, t in enumerate(texts)
    )
    n_bytes = sum(len(t.encode()) for t in texts)
    bits_per_byte = -total / n_bytes / math.log(2)
    assert results["stdlib_heldout_ppl"]["bits_per_byte,none"] == pytest.approx(bits_per_byte, 1e-4)
    assert 0.5 < bits_per_byte < 8.5  # 4096-token vocabulary: < log2(4096) bits per token


def test_offline_data_is_held_out_and_deterministic(tmp_path):
    from megadyt.data.builtin import ensure_stdlib_corpus
    from megadyt.evaluation import offline

    docs = offline_docs("stdlib_nextline", offline.NEXTLINE_EXAMPLES)
    assert len(docs) == offline.NEXTLINE_EXAMPLES
    for doc in docs:
        assert len(doc["choices"]) == 4 and len(set(doc["choices"])) == 4
        assert doc["choices"][doc["label"]].strip() == doc["answer"]
    modules = {d["module"] for d in docs}
    files = ensure_stdlib_corpus(offline.cache_dir())
    with open(files.train_jsonl) as handle:
        train_modules = {json.loads(line)["meta"]["module"] for line in handle}
    assert not modules & train_modules
    # rebuilt from scratch into another cache: the same bytes
    fresh = offline.build_task_data("stdlib_nextline", cache=str(tmp_path))
    assert Path(fresh).read_bytes() == Path(offline.build_task_data("stdlib_nextline")).read_bytes()


def test_evaluate_model_scores_an_in_memory_model(run_dir, lm):
    from megadyt.evaluation.periodic import evaluate_model

    lm.model.train()
    scalars = evaluate_model(lm.model, lm.cfg, ["stdlib_nextline"], limit=8)
    assert lm.model.training  # mode restored
    lm.model.eval()
    assert scalars["eval/stdlib_nextline"] == pytest.approx(
        direct_nextline_accuracy(lm, offline_docs("stdlib_nextline", 8))
    )
    assert scalars["eval/average"] == scalars["eval/stdlib_nextline"]


def test_eval_cli_reports_json_tensorboard_and_failed_hub_task(run_dir, tmp_path):
    from megadyt.evaluation.curves import read_scalars

    out = tmp_path / "results.json"
    env = clean_env(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "megadyt",
            "eval",
            "--checkpoint",
            str(run_dir),
            "--tasks",
            "stdlib_nextline,arc_easy",
            "--limit",
            "6",
            "--output",
            str(out),
            "--run-dir",
            str(run_dir),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "task arc_easy failed" in proc.stderr and "hub" in proc.stderr
    assert "| stdlib_nextline | acc |" in proc.stdout
    assert f"evaluating step 4: {run_dir / 'checkpoints' / 'step_0000004'}" in proc.stdout
    result = json.loads(out.read_text())
    assert set(result["errors"]) == {"arc_easy"}  # unknown names: tests/test_eval_arguments.py
    score = result["tasks"]["stdlib_nextline"]["value"]
    assert result["average"] == score and result["step"] == 4
    saved = json.loads(
        (run_dir / "eval" / "step_0000004-stdlib_nextline+arc_easy.json").read_text()
    )
    assert saved["tasks"] == result["tasks"]
    scalars = read_scalars(run_dir / "tb")
    assert scalars["eval/stdlib_nextline"][4] == pytest.approx(score)
    assert scalars["eval/average"][4] == pytest.approx(score)


def test_eval_cli_user_errors(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "megadyt", "eval", "--checkpoint", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    )
    assert proc.returncode == 2 and "no checkpoint found" in proc.stderr


def _cli(*args: str):
    return run_cli(*args, timeout=300, env=clean_env(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"))


def test_eval_and_export_refuse_checkpoints_that_fail_the_manifest(run_dir, tmp_path):
    """Readers verify the weights they read, as a resume does; --no-verify opts out."""
    import shutil

    from megadyt.training.run.layout import RunDir, manifest_file, resolve_checkpoint, weights_file

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    tag_dir = resolve_checkpoint(copy)
    shard = weights_file(tag_dir, 0)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the weights
    shard.write_bytes(bytes(data))

    refused = _cli("export", "--checkpoint", str(copy), "--output", str(tmp_path / "w.pt"))
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert f"checkpoint file {shard} fails its checksum" in refused.stderr
    assert "--no-verify" in refused.stderr and not (tmp_path / "w.pt").exists()
    forced = _cli(
        "export", "--checkpoint", str(copy), "--output", str(tmp_path / "w.pt"), "--no-verify"
    )
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert "exported step 4" in forced.stdout and "unverified" in forced.stdout

    (shard.parent / "tp_rank_01.pt").write_bytes(shard.read_bytes())  # a shard added later
    added = _cli("export", "--checkpoint", str(copy), "--output", str(tmp_path / "x.pt"))
    assert added.returncode == 2 and "tp_rank_01.pt is not covered" in added.stderr

    manifest_file(tag_dir).unlink()
    incomplete = _cli("eval", "--checkpoint", str(copy), "--tasks", "stdlib_nextline")
    assert incomplete.returncode == 2, incomplete.stderr[-2000:]
    assert f"checkpoint {tag_dir} has no manifest.json" in incomplete.stderr
    assert str(RunDir(copy).latest_file) in incomplete.stderr


def test_export_names_the_verified_step(run_dir, tmp_path):
    proc = _cli("export", "--checkpoint", str(run_dir), "--output", str(tmp_path / "w.pt"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "exported step 4" in proc.stdout and ", verified)" in proc.stdout
    assert (tmp_path / "w.pt").is_file() and (tmp_path / "w.yaml").is_file()


@pytest.fixture(scope="module")
def hf_dir(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "export"
    proc = _cli("export", "--format", "hf", "--checkpoint", str(run_dir), "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "exported step 4" in proc.stdout and "trust_remote_code=True" in proc.stdout
    assert "tokenizer.json checked on" in proc.stdout and "prefix token" in proc.stdout
    return out


def test_hf_export_of_a_trained_run_gives_its_logits_in_transformers(run_dir, lm, hf_dir):
    """`export --format hf` of a real checkpoint (the lm fixture loaded the same one):
    transformers (with the exported modeling file) computes the same logits; a second export
    into the same directory is refused in one line, exit 2."""
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(
        hf_dir, trust_remote_code=True, dtype=torch.float32
    )
    tokens = torch.randint(0, 4096, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (hf(input_ids=tokens).logits - lm.model(tokens)).abs().max()
    assert float(diff) <= 1e-4
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["eos_token_id"] == lm.tok.eos_id and config["megadyt_norm"] == "dyt"
    again = _cli("export", "--format", "hf", "--checkpoint", str(run_dir), "--output", str(hf_dir))
    assert again.returncode == 2 and "exists" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1 and "Traceback" not in again.stderr


def test_exported_tokenizer_gives_sentencepiece_ids_on_every_heldout_text(lm, hf_dir):
    """transformers' AutoTokenizer over the export: the same ids as the run's SentencePiece
    model on every held-out document and line (and the edge cases), and the same decoding."""
    import transformers

    from megadyt.data.builtin import heldout_texts
    from megadyt.interop.hf_tokenizer import EDGE_CASES

    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    texts = [*EDGE_CASES, *heldout_texts(lm.cfg.data.cache_dir)]
    assert len(texts) > 5000
    ids = tokenizer(texts)["input_ids"]
    differ = [t for t, got in zip(texts, ids) if got != lm.tok.encode(t)]
    assert differ == []
    for text in texts[:300]:
        assert tokenizer.decode(lm.tok.encode(text)) == lm.tok.decode(lm.tok.encode(text))
    assert tokenizer.eos_token_id == lm.tok.eos_id and tokenizer.bos_token_id == lm.tok.bos_id


def test_lm_eval_hf_backend_scores_the_export_like_megadyt_eval(lm, hf_dir):
    """lm-eval's own `hf` model over the export, with EOS as the prefix token (the command in
    docs/interop.md): per-request loglikelihoods within 1e-4 of the `megadyt` model's, for
    multiple-choice continuations and rolling (perplexity) documents longer than the context."""
    from lm_eval.models.huggingface import HFLM

    from megadyt.data.builtin import heldout_texts

    hf = HFLM(
        pretrained=str(hf_dir), trust_remote_code=True, dtype="float32", device="cpu",
        batch_size=3, prefix_token_id=lm.tok.eos_id,
    )  # fmt: skip
    assert hf.max_length == lm.max_length
    lines = [t for t in heldout_texts(lm.cfg.data.cache_dir) if 20 < len(t) < 200][:12]
    pairs = [(lines[i], "\n" + lines[i + 1]) for i in range(0, 12, 2)] + [("", lines[0])]
    requests = [instance("loglikelihood", pair, i) for i, pair in enumerate(pairs)]
    ours, theirs = lm.loglikelihood(requests), hf.loglikelihood(requests)
    assert [greedy for _, greedy in ours] == [greedy for _, greedy in theirs]
    assert max(abs(a - b) for (a, _), (b, _) in zip(ours, theirs)) <= 1e-4
    documents = [LONG_TEXT, lines[3], " leading space\n" + lines[4]]
    rolling = [instance("loglikelihood_rolling", (doc,), i) for i, doc in enumerate(documents)]
    ours, theirs = lm.loglikelihood_rolling(rolling), hf.loglikelihood_rolling(rolling)
    assert len(lm.tok.encode(LONG_TEXT)) > 2 * lm.max_length  # several windows
    # a long document's sum is ~1e3 nats: fp32 resolves it to ~1e-4, so 1e-6 relative there
    assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-4) for a, b in zip(ours, theirs))
    assert max(abs(a - b) for a, b in zip(ours[1:], theirs[1:])) <= 1e-4


def test_suites_expand_to_the_papers_15_tasks():
    from megadyt.evaluation.harness import expand_tasks

    paper = expand_tasks("paper15")
    assert len(paper) == 15 == len(set(paper))
    assert {"anli_r1", "record", "winogrande", "truthfulqa_mc2", "wic"} <= set(paper)
    assert expand_tasks("offline,piqa,stdlib_nextline")[-1] == "piqa"
    from lm_eval.tasks import TaskManager

    known = set(TaskManager().all_tasks)
    assert set(paper) <= known  # names as lm-eval spells them


# ------------------------------------------------------------------ TP=2 checkpoint
TP2 = [
    "model.num_layers=2",
    "model.hidden_size=64",
    "model.ffn_hidden_size=176",
    "model.seq_length=64",
    "model.norm=dyt",
    "parallel.tp=2",
    "train.steps=2",
    "train.log_interval=1",
    "train.eval_interval=2",
    "train.eval_iters=1",
    "train.global_batch_size=2",
    "train.micro_batch_size=2",
]


def _train_tp2_and_score(rank: int, world_size: int, run_dir: str, tokens: list[int]) -> list:
    """Train a TP=2 run, then score `tokens` with its TP=2 shards loaded into a TP=2 model."""
    from megadyt.config import config_from_dict, load_config
    from megadyt.model import build_model
    from megadyt.parallel.distributed import seed_everything
    from megadyt.training.run.layout import resolve_checkpoint, weights_file
    from megadyt.training.trainer import train

    cfg = load_config(str(ROOT / "configs/tiny/dyt.yaml"), [*TP2, f"run.dir={run_dir}"])
    train(cfg)
    shard = torch.load(weights_file(resolve_checkpoint(run_dir), rank), weights_only=True)
    seed_everything(0)
    model = build_model(config_from_dict(shard["config"]), perform_initialization=False)
    model.load_state_dict(shard["state"], strict=False)
    model.eval()
    x = torch.tensor([tokens])
    with torch.no_grad():
        per_token = model(x[:, :-1], labels=x[:, 1:])  # vocab-parallel cross entropy
    return per_token[0].tolist()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_tp2_checkpoint_scores_like_the_tp2_model(tmp_path, lm):
    from megadyt.evaluation.lm import MegadytLM
    from megadyt.parallel.testing import run_distributed

    text = LONG_TEXT[:600]
    tokens = [lm.tok.eos_id, *lm.tok.encode(text)][:64]
    run_dir = tmp_path / "tp2"
    cwd = os.getcwd()
    os.chdir(ROOT)  # data.cache_dir is relative
    try:
        losses = run_distributed(
            _train_tp2_and_score, world_size=2, run_dir=str(run_dir), tokens=tokens
        )
    finally:
        os.chdir(cwd)
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)  # every TP rank agrees
    tp2_lm = MegadytLM(checkpoint=str(run_dir))
    assert tp2_lm.cfg.parallel.tp == 1
    # losses[i] = -log p(tokens[i+1] | tokens[:i+1]) under TP=2
    for k in (1, 10, 40):
        ((got, _),) = tp2_lm._loglikelihood_tokens([(None, tokens[:k], tokens[k:])])
        assert got == pytest.approx(-sum(losses[0][k - 1 :]), rel=1e-5, abs=1e-3)
    window = tp2_lm.max_length
    assert len(tokens) == window  # one full window: rolling = the whole sum
    text_tokens = tokens[1:]
    (rolling,) = tp2_lm.loglikelihood_rolling(
        [instance("loglikelihood_rolling", (tp2_lm.tok.decode(text_tokens),))]
    )
    if tp2_lm.tok.encode(tp2_lm.tok.decode(text_tokens)) == text_tokens:
        assert rolling == pytest.approx(-sum(losses[0]), rel=1e-5, abs=1e-3)
