"""The checkpointer: when the loop saves, what goes into a checkpoint, and resuming from one.

A checkpoint holds DeepSpeed's engine state, the caller's client state (step, data position, spike
history), every rank's RNG and each TP shard's weights in a form one device can load
(`training.checkpoint.weights`), all covered by the manifest. A failed save stops the run or, with
`train.on_save_error=warn`, is reported and training goes on. After each published checkpoint rank 0
applies the retention policy (`training.checkpoint.retention`, train.keep_checkpoints) while the
other ranks wait, then the `after_publish` hook runs on every rank and sees what was kept.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist

from megadyt.config.schema import Config
from megadyt.training.checkpoint import store
from megadyt.training.checkpoint.reshard import remove_conversions
from megadyt.training.checkpoint.retention import Retention, prune
from megadyt.training.checkpoint.weights import keeps_weights_copy, save_tp_shard
from megadyt.training.run.layout import RunDir, tag_for

# (the run, the step just published) -> None; called on every rank after a successful save.
AfterPublish = Callable[[RunDir, int], None]


class Checkpointer:
    def __init__(
        self, cfg: Config, engine, run: RunDir, after_publish: AfterPublish | None = None
    ) -> None:
        self.cfg, self.engine, self.run = cfg, engine, run
        self.after_publish = after_publish
        self.retention = Retention.from_config(cfg.train)
        self.model_identity = cfg.to_dict()["model"]  # refused on resume if it differs

    def tag_dir(self, step: int) -> Path:
        return self.run.tag_dir(tag_for(step))

    def load(self) -> dict | None:
        """The client state of the checkpoint `latest` names (verified first), or None."""
        return store.load_checkpoint(
            self.engine, self.run, self.cfg.train.resume_fallback, model=self.model_identity
        )

    def save(self, step: int, client_state: dict) -> bool:
        """Save and publish a checkpoint of `step` (every rank). False when it failed and
        train.on_save_error=warn let training go on; a failure raises otherwise."""
        try:
            store.save_checkpoint(
                self.engine,
                self.run,
                step,
                client_state,
                before_publish=lambda tag_dir: save_tp_shard(
                    self.engine, self.cfg, tag_dir, keeps_weights_copy(self.cfg, step)
                ),
                model=self.model_identity,
            )
        except store.CheckpointSaveError as exc:
            if self.cfg.train.on_save_error == "stop":
                raise
            if dist.get_rank() == 0:
                print(
                    f"megadyt: warning: {exc}; training continues (train.on_save_error=warn)",
                    flush=True,
                )
            return False
        self._after_publish(step)
        return True

    def _after_publish(self, step: int) -> None:
        """Retention on rank 0 only (every rank finished writing before the publish; the others
        wait, so none reads a checkpoint being deleted), then the caller's hook on every rank."""
        if dist.get_rank() == 0:
            if self.retention is not None:
                prune(self.run, self.retention)
            remove_conversions(self.run)  # a resume on another size used it; now it is stale
        dist.barrier()
        if self.after_publish is not None:
            self.after_publish(self.run, step)
