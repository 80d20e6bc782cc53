"""Callbacks for crash tests: SIGKILL at a step (a crash no code can catch), or wait at a
step for a signal from outside."""

import os
import signal
import time
from pathlib import Path

import lightning as L


class KillAtStep(L.Callback):
    """SIGKILL at optimizer step ``step``, before that step's checkpoint (Lightning runs
    checkpoint callbacks after the others); with ``flush``, right after the loggers wrote
    what they hold, as if the kill fell just after a periodic flush."""

    def __init__(self, step: int, flush: bool = False) -> None:
        self.step = step
        self.flush = flush

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            if self.flush:
                for logger in trainer.loggers:
                    logger.save()
            os.kill(os.getpid(), signal.SIGKILL)


class WaitAtStep(L.Callback):
    """At a given step, create ``marker`` and wait there (at most ``timeout`` seconds)
    for the test to send a signal: the signal then arrives mid-training, at a known
    step, without the test guessing how long start-up takes."""

    def __init__(self, step: int, marker: str, timeout: float = 120.0) -> None:
        self.step = step
        self.marker = marker
        self.timeout = timeout

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step:
            return
        Path(self.marker).touch()
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            time.sleep(0.01)
