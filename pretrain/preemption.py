"""Preemption: SIGTERM or SIGUSR1 asks a run to stop cleanly, so that a cluster can requeue it.

The handler only sets a flag. The loop looks at it after a step (:meth:`Trainer.run`): it finishes
that step, writes ``checkpoints/last.pt`` atomically (the ordinary checkpoint, so the re-run
continues exactly), and ``fdbench pretrain`` exits with :data:`EXIT_REQUEUE`.

Exit code 75 is ``EX_TEMPFAIL`` of ``sysexits.h`` ("temporary failure; the user is invited to
retry"): distinct from success (0), fdbench's user errors (2), crashes (1) and death by a signal
(128 + N), so a batch script can tell "stopped on request, requeue me" from everything else
(``fdbench launch slurm`` writes such a script).

Why these two signals: SLURM sends SIGTERM when a job is preempted or cancelled (then SIGKILL after
its grace time) and, with ``--signal=USR1@T``, SIGUSR1 T seconds before the time limit; ``torchrun``
passes the signals it handles on to each worker. A worker may so get the same request twice (from
SLURM, which signals every process of a step, and from torchrun): repeats are ignored. To stop at
once use SIGINT (Ctrl-C) or SIGKILL; atomic writes leave no half-written file either way.

Under DDP the ranks must stop after the same step (the checkpoint is a collective): each rank's flag
travels in the step's loss all-reduce (no extra collective) and is read on logging steps, so a
signalled DDP run stops within ``--log-every`` steps; one process looks at its flag every step.
"""

from __future__ import annotations

import signal
import threading

EXIT_REQUEUE = 75  # sysexits.h EX_TEMPFAIL
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionWatch:
    """Installs the handlers on enter (main thread only; elsewhere it watches nothing) and restores
    the previous ones on exit. ``requested`` is the signal's name once one arrived, else None."""

    def __init__(self, log=lambda message: None):
        self.log = log
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:  # the same request again (SLURM and torchrun both forward it)
            return
        self.requested = signal.Signals(signum).name
        self.log(f"{self.requested} received: finishing this step, saving last.pt, then exiting ({EXIT_REQUEUE})")

    def __enter__(self) -> PreemptionWatch:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def flag(self) -> float:
        return 0.0 if self.requested is None else 1.0
