"""Zero-shot evaluation inside training at TP > 1 and under ZeRO-3, scored like `megadyt eval`.

Two gloo processes, reused for both runs:
1. TP=2 with sequence parallelism (ZeRO-1): periodic scores at steps 2 and 4, and the final table
   of the last checkpoint, which must equal `megadyt eval --tp 2` on that checkpoint (the CLI's
   own code, in the same processes: rank 0 runs lm-eval, rank 1 follows).
2. TP=1 over DP=2 under ZeRO-3 (every forward gathers parameters from both ranks, so both run
   them): a SIGUSR1 raised during the step-2 evaluation is honoured after it (the scores are
   logged, then the run stops with a checkpoint); the resumed run writes its final table, which
   must equal `megadyt eval` of that checkpoint merged on one device.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from helpers import ROOT, TINY_CLI_RUN, metrics_records

from megadyt.parallel.testing import run_distributed

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

FINAL = ["train.final_zero_shot_tasks=[stdlib_nextline,stdlib_heldout_ppl]",
         "train.final_zero_shot_limit=6"]  # fmt: skip
PERIODIC = ["train.zero_shot_tasks=[stdlib_nextline]", "train.zero_shot_interval=2",
            "train.zero_shot_limit=4"]  # fmt: skip
TABLE = "eval/step_0000004-stdlib_nextline+stdlib_heldout_ppl.json"


class _StopDuringFirstEvaluation:
    """The real scorer; rank 0 receives SIGUSR1 while it scores the first time."""

    def __init__(self) -> None:
        from megadyt.evaluation.periodic import ZeroShot

        self.scorer, self.calls = ZeroShot(), 0

    def resolve(self, tasks, cfg):
        self.scorer.resolve(tasks, cfg)

    def __call__(self, model, cfg, tasks, limit):
        self.calls += 1
        if self.calls == 1 and int(os.environ["RANK"]) == 0:
            os.kill(os.getpid(), signal.SIGUSR1)  # the handler only records it
        return self.scorer(model, cfg, tasks, limit)

    def table(self, *args):
        return self.scorer.table(*args)


def _runs(rank: int, world_size: int, root: str) -> dict:
    from megadyt.cli.main import main
    from megadyt.config import load_config
    from megadyt.evaluation.periodic import ZeroShot
    from megadyt.parallel.distributed import destroy_distributed
    from megadyt.training.trainer import train

    def next_phase() -> None:  # a new rendezvous: the last one's store may still be up
        destroy_distributed()
        os.environ["MASTER_PORT"] = str(int(os.environ["MASTER_PORT"]) + 1)
        print(f"phase at {time.perf_counter() - start:.1f} s", flush=True)

    def config(run_dir: str, *extra: str):
        sets = [*TINY_CLI_RUN, *FINAL, *PERIODIC, f"run.dir={run_dir}", *extra]
        return load_config(str(ROOT / "configs/tiny/dyt.yaml"), sets)

    out, start = {}, time.perf_counter()
    tp2 = f"{root}/tp2"
    result = train(config(tp2, "parallel.tp=2", "parallel.sp=true"), zero_shot=ZeroShot())
    next_phase()
    out["tp2_last"] = result.last_step
    out["tp2_eval_rc"] = main(["eval", "--checkpoint", tp2, "--tp", "2", "--tasks",
                               "stdlib_nextline,stdlib_heldout_ppl", "--limit", "6",
                               "--output", f"{root}/tp2-eval.json"])  # fmt: skip
    next_phase()

    zero3 = config(f"{root}/zero3", "parallel.zero_stage=3", "train.micro_batch_size=2")
    stopped = train(zero3, zero_shot=_StopDuringFirstEvaluation())
    next_phase()
    resumed = train(zero3, zero_shot=ZeroShot())
    next_phase()
    out["zero3"] = [(r.first_step, r.last_step, r.stop_signal) for r in (stopped, resumed)]
    return out


def test_zero_shot_in_training_at_tp2_and_zero3_equals_megadyt_eval(tmp_path):
    from megadyt.cli.main import main
    from megadyt.evaluation.results import SCORE_FIELDS

    ranks = run_distributed(_runs, world_size=2, timeout=600, root=str(tmp_path))
    assert ranks[0] == ranks[1] | {"tp2_eval_rc": 0} and ranks[0]["tp2_eval_rc"] == 0
    assert ranks[0]["tp2_last"] == 4
    assert ranks[0]["zero3"] == [(0, 2, "SIGUSR1"), (2, 4, None)]

    def same_scores(path, other) -> bool:
        """Whether two results files hold the same scores of the same evaluation."""
        a, b = json.loads(path.read_text()), json.loads(other.read_text())
        described = [k for k in (*SCORE_FIELDS, "errors") if k not in ("tasks", "average")]
        assert {k: a[k] for k in described} == {k: b[k] for k in described}
        assert {t: e["metric"] for t, e in a["tasks"].items()} == {
            t: e["metric"] for t, e in b["tasks"].items()
        }
        numbers = [{f"{t}/{m}": v for t, e in x["tasks"].items() for m, v in e["metrics"].items()}
                   | {"average": x["average"]} for x in (a, b)]  # fmt: skip
        return numbers[0] == pytest.approx(numbers[1], rel=1e-6)

    # 1. TP=2 + SP: the trainer's final table is `megadyt eval --tp 2`'s
    tp2 = tmp_path / "tp2"
    table = json.loads((tp2 / TABLE).read_text())
    assert table["tp"] == 2 and table["checkpoint"] == str(tp2 / "checkpoints/step_0000004")
    assert set(table["tasks"]) == {"stdlib_nextline", "stdlib_heldout_ppl"}
    assert table["errors"] == {} and 0 < table["tasks"]["stdlib_heldout_ppl"]["value"]
    assert same_scores(tp2 / TABLE, tmp_path / "tp2-eval.json")
    records = metrics_records(tp2)
    periodic = [r["step"] for r in records if "eval/stdlib_nextline" in r]
    assert periodic == [2, 4]  # every zero_shot_interval, and the final step
    final = [r for r in records if "final/stdlib_nextline" in r]
    assert [(r["step"], r["final/stdlib_nextline"]) for r in final] == [
        (4, table["tasks"]["stdlib_nextline"]["value"])
    ]

    # 2. ZeRO-3: the step-2 scores were logged before the stop; the final table is `megadyt
    # eval`'s of the same checkpoint merged on one device
    zero3 = tmp_path / "zero3"
    records = metrics_records(zero3)
    assert sorted(r["step"] for r in records if "eval/stdlib_nextline" in r) == [2, 4]
    assert (zero3 / "checkpoints/step_0000002/manifest.json").is_file()
    merged = tmp_path / "z3.json"
    assert main(["eval", "--checkpoint", str(zero3), "--tasks", "stdlib_nextline,"
                 "stdlib_heldout_ppl", "--limit", "6", "--output", str(merged)]) == 0  # fmt: skip
    assert same_scores(zero3 / TABLE, merged)
