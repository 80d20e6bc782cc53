"""Ctrl-C inside a Lightning ``Trainer`` call: a ``KeyboardInterrupt``, as everywhere else.

On Ctrl-C Lightning (``lightning.pytorch.trainer.call._call_and_handle_interrupt``) logs
"Detected KeyboardInterrupt, attempting graceful shutdown ...", sets SIGINT to *ignored*
for the rest of the process and calls ``sys.exit(1)``. So ``scenemtl predict`` and
``bench`` ended with status 1 instead of 130, and a ``Model.predict`` interrupted in a
notebook left Ctrl-C ignored for the rest of the session. :func:`interrupts_raise` undoes
all three: the SystemExit becomes a KeyboardInterrupt again (the CLI turns that into
``scenemtl: interrupted`` and status 130), the SIGINT handler is put back, and the log
line is dropped (the CLI prints its own line).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

LIGHTNING_INTERRUPT_LINE = "Detected KeyboardInterrupt"
_RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)


class _DropInterruptLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).lstrip().startswith(LIGHTNING_INTERRUPT_LINE)


def was_interrupted(exit_: SystemExit) -> bool:
    """Whether ``exit_`` is Lightning's exit after a Ctrl-C: it calls ``sys.exit`` while
    handling the KeyboardInterrupt, which is therefore the SystemExit's context."""
    return isinstance(exit_.__context__, KeyboardInterrupt)


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """Around Trainer calls (``fit``, ``validate``, ``predict``, a LightningCLI run):
    Ctrl-C raises KeyboardInterrupt out of the block, with the SIGINT handler restored.

    Raises:
        KeyboardInterrupt: Lightning exited because of Ctrl-C.
    """
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main else None
    quiet = _DropInterruptLine()
    loggers = [logging.getLogger(name) for name in _RANK_ZERO_LOGGERS]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    except SystemExit as e:
        if was_interrupted(e):
            raise KeyboardInterrupt from None
        raise
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)
        if handler is not None:
            signal.signal(signal.SIGINT, handler)
