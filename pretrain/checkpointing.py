"""A run's checkpoint, assembled from its parts' state dicts and handed back to them on resume, so
that save and resume cannot drift apart; and the check that a resumed run is the same recipe.

:class:`CheckpointParts` is a part of :class:`pretrain.engine.Trainer` (a mixin): it reads the
trainer's parts (``meta``, ``optimizer``, ``state``, ``collapse``, ``folder``, the data and stage
plan) and nothing else.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch.distributed as dist

from fdbench.errors import FdbenchError, brief
from pretrain.config import RESUME_SAFE_KEYS, PretrainConfig
from pretrain.distributed import gather_rng
from pretrain.sharding import full_optimizer_state

# what resume_from reads from checkpoints/last.pt (a missing one is named, not a KeyError)
RESUME_ENTRIES = ("config", "student", "teacher", "losses", "optimizer", "rng", "data_position", "step", "knn")
RESUME_ENTRIES += ("elapsed_s", "run_time_s", "cpu_time_s", "costs", "none_flops_per_image")


def _flat(nested: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in nested.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def check_same_run(saved: dict, cfg: PretrainConfig, out: Path) -> None:
    """A resumed run must be the same recipe; only fields marked ``resume_safe`` (logging, I/O, speed) may change.

    Options the saved config predates read as their defaults (a run started before an option
    existed still resumes)."""
    now, before = _flat(cfg.to_dict()), _flat(PretrainConfig.from_dict(saved).to_dict())
    diffs = [
        f"{k}: {before.get(k)!r} -> {now.get(k)!r}"
        for k in sorted(set(now) | set(before))
        if k not in RESUME_SAFE_KEYS and before.get(k) != now.get(k)
    ]
    if diffs:
        raise FdbenchError(
            f"{out} holds a run with different settings ({'; '.join(diffs[:4])}"
            f"{'; ...' if len(diffs) > 4 else ''}); use another --out to start a new run, "
            f"or delete {out}"
        )


class CheckpointParts:
    """The trainer's checkpoint: :meth:`checkpoint` assembles it, :meth:`resume_from` restores it,
    :meth:`save` writes it (every rank calls it: gathering RNG states and shards are collectives)."""

    def checkpoint(self, final: bool = False, parts: dict | None = None, optimizer_state: dict | None = None) -> dict:
        """The checkpoint dict; ``parts`` / ``optimizer_state``: the model's and the optimiser's state
        when already gathered (under FSDP every rank gathers them, see :meth:`save`)."""
        cfg, state = self.cfg, self.state
        ckpt = {
            "kind": "training",
            **(parts if parts is not None else self.meta.state_dict_parts()),
            "config": cfg.to_dict(),
            "curriculum": self.curriculum.to_dict(),
            "stages": [dataclasses.asdict(p) for p in self.stages],
            "data": {
                "root": str(self.root),
                "image_size": self.full_size,
                "class_list": cfg.data.class_list,
                "fingerprint": self.data_fingerprint,
            },
            "run_name": cfg.run_name,
            "data_position": {
                "epoch": state.epoch,
                "step_in_epoch": state.step_in_epoch,
                "iters_per_epoch": self.iters_per_epoch,
                "global_batch": cfg.run.batch_size,
                "seed": cfg.run.seed,
                "pipeline": self.pipeline,
            },
            "schedule": {"iteration": state.step, "total_iterations": self.total_iters},
            **state.state_dict(),
            "collapse_watch": self.collapse.state_dict(),
        }
        if not final:
            ckpt["optimizer"] = optimizer_state if optimizer_state is not None else self.optimizer.state_dict()
        return ckpt

    def resume_from(self, ckpt: dict) -> None:
        last, fix = self.folder.last, "rename it to start this run over, or use another --out"
        missing = [k for k in RESUME_ENTRIES if k not in ckpt]
        if missing:
            raise FdbenchError(f"{last} is damaged or incomplete: it has no {', '.join(missing)}; {fix}")
        try:
            check_same_run(ckpt["config"], self.cfg, self.folder.out)
            then, now = (ckpt.get("data") or {}).get("fingerprint"), self.data_fingerprint
            if then and now and then != now:  # older checkpoints have none: nothing to compare
                raise FdbenchError(
                    f"{self.folder.out} was trained on another dataset at {self.root} (fingerprint {then}, "
                    f"now {now}: images added, removed or replaced); use another --out to start a new run"
                )
            self.meta.load_state_dict_parts(ckpt)
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.state.load_state_dict(ckpt)
            if "collapse_watch" in ckpt:  # checkpoints written before the collapse monitor have none
                self.collapse.load_state_dict(ckpt["collapse_watch"])
            before = ckpt["data_position"].get("pipeline", "cpu")
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as err:
            raise FdbenchError(f"{last} is damaged or incomplete ({brief(err)}); {fix}") from None
        self.saved_rng = ckpt["rng"]  # restored just before the first step (see run())
        self.log(f"resuming {self.folder.out} at step {self.state.step}/{self.total_iters} (epoch {self.state.epoch})")
        if before != self.pipeline:  # `auto` on another kind of device: same distributions, other draws
            self.log(
                f"note: this run's crops so far came from the {before} pipeline, from here on from the "
                f"{self.pipeline} one (--data-pipeline {before} keeps them exactly reproducible)"
            )

    def save(self, final: bool = False) -> None:
        self.stop_if_non_finite()  # never overwrite the last good checkpoint with a diverged model
        rngs = gather_rng(self.dist)  # collective: every rank calls save()
        parts = optimizer_state = None
        if self.sharding:  # gathering the shards is a collective too
            parts = self.meta.state_dict_parts()
            optimizer_state = None if final else full_optimizer_state(self.optimizer)
        if self.dist.main:
            ckpt = self.checkpoint(final, parts, optimizer_state)
            ckpt["rng"] = rngs
            keep, epoch = self.cfg.run.keep_every_epochs, self.state.epoch
            keep_as = epoch if (not final and keep and self.state.step_in_epoch == 0 and epoch % keep == 0) else None
            self.folder.save_checkpoint(ckpt, final=final, keep_as_epoch=keep_as)
            self.folder.write_metrics()
            self.folder.write_summary(self.summary(finished=final))
        if self.dist.world_size > 1:
            # every rank returns once rank 0's files are on disk. Without this, a rank that stopped
            # (stop_after_steps, a signal) and started the next run in the same process group could
            # read the previous last.pt while rank 0 was still writing the new one, resume one step
            # earlier than rank 0 and meet its collectives out of order (gloo: "collective mismatch")
            dist.barrier()
