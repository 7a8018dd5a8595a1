"""Process-wide state for one run, set here and restored after it: signals, file descriptor 2,
TensorFlow's global options. A library call leaves the process as it found it.

The interrupt rules live here, all of them:
- SIGTERM (`kill`, Slurm, Kubernetes) stops a run as Ctrl-C does;
- while streaming, a first Ctrl-C or SIGTERM takes effect once the batch in flight is written,
  a second one at once;
- a signal that is ignored (SIG_IGN: a background job) stays ignored;
- `Interrupted` tells the caller whether anything reached OUTPUT, so that what it says is true.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM. A KeyboardInterrupt, so that library callers who
    handle those still do; `wrote` says whether OUTPUT was opened (and is now marked incomplete)
    or is as it was before the run; for --update, `scratch` names the new output being written
    (OUTPUT is as it was); `phase` says what was under way when nothing was written yet."""

    def __init__(
        self, output: str, wrote: bool, scratch: str | None = None, phase: str = ""
    ) -> None:
        super().__init__(output)
        self.output = output
        self.wrote = wrote
        self.scratch = scratch  # --update: where the rows computed so far are (OUTPUT is as it was)
        self.phase = phase  # what was under way, for the message: "reading the files" ...


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_stops() -> Iterator[None]:
    """For the run: SIGTERM raises KeyboardInterrupt, so it stops a run as Ctrl-C does (the
    output is flushed and marked incomplete). The previous handler comes back afterwards."""
    if not _in_main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield  # a handler of the caller's own, or SIG_IGN: theirs to keep
        return
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class SignalsBetweenBatches:
    """Ctrl-C and SIGTERM while streaming take effect once the batch in flight is written.

    Python runs a signal's handler at whatever bytecode the main thread is on: the
    KeyboardInterrupt it raises could land inside h5py's, tf.data's or OpenVINO's Python code
    between two native calls, and the abort that follows then calls into a library left half-way
    (a SIGTERM'd run under load died of SIGSEGV that way). Here a first signal is only recorded
    and delivered to the handler that was there before (KeyboardInterrupt, or death by SIGTERM)
    after the batch is committed -- which costs no time: the main thread spends a batch inside
    the model's native call, where no handler runs anyway. A second signal is delivered at once.
    Signals that are ignored stay ignored; outside the main thread nothing changes.
    """

    def __init__(self, after_bar: bool = False) -> None:
        self._after_bar = after_bar  # a progress bar holds the line: start the note on a new one
        self._previous: dict[int, Any] = {}
        self._pending: int | None = None
        self._stderr_fd: int | None = None  # sys.stderr's, which the CLI moves off fd 2

    def __enter__(self) -> SignalsBetweenBatches:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            sys.stderr.flush()
            self._stderr_fd = sys.stderr.fileno()
        if _in_main_thread():
            for signum in SIGNALS:
                handler = signal.getsignal(signum)
                if handler not in (signal.SIG_IGN, None):
                    self._previous[signum] = handler
                    signal.signal(signum, self._record)
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.deliver()  # one that came after the last batch's check is not lost
        self._restore()

    def _record(self, signum: int, frame: Any) -> None:
        if self._pending is not None:
            self._pending = signum
            self.deliver()  # the second: stop now
            return
        self._pending = signum
        again = "press Ctrl-C again" if signum == signal.SIGINT else "send another signal"
        note = f"efx: stopping once the batch in flight is written ({again} to stop at once)\n"
        note = ("\n" if self._after_bar else "") + note
        with contextlib.suppress(Exception):
            if self._stderr_fd is not None:  # os.write: a handler must not re-enter sys.stderr
                os.write(self._stderr_fd, note.encode())
            else:
                sys.stderr.write(note)  # captured in memory (a test): nothing to re-enter

    def deliver(self) -> None:
        """Hand a recorded signal to the handler it was meant for (raises KeyboardInterrupt)."""
        if self._pending is None:
            return
        signum, self._pending = self._pending, None
        self._restore()
        signal.raise_signal(signum)  # the restored Python handler runs before this returns

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


@contextlib.contextmanager
def tensorflow_options_restored() -> Iterator[None]:
    """TensorFlow's grappler options (a precision rewrite) set during the run are put back."""
    before = _grappler_options()
    try:
        yield
    finally:
        after = _grappler_options()
        changed = {k: before.get(k, False) for k, v in after.items() if before.get(k) != v}
        if changed:
            sys.modules["tensorflow"].config.optimizer.set_experimental_options(changed)


def _grappler_options() -> dict[str, Any]:
    # Not imported yet, or still being imported by efx's import thread (efx.engine): nothing
    # set, and nothing to ask of a module without its attributes.
    config = getattr(sys.modules.get("tensorflow"), "config", None)
    return dict(config.optimizer.get_experimental_options()) if config else {}


@contextlib.contextmanager
def native_logs_hidden(verbose: bool, whole_process: bool = True) -> Iterator[None]:
    """Keep TensorFlow's C++ chatter (oneDNN, CUDA, libjpeg notices) off the terminal.

    Those lines go straight to file descriptor 2, so the only way to hide them is to point fd 2
    at /dev/null and give Python's sys.stderr a duplicate of the real stderr for efx's own
    output (messages, progress bar, tracebacks of real bugs). Everything comes back afterwards.
    `whole_process` (the command) also sets TF_CPP_MIN_LOG_LEVEL=3 before TensorFlow is
    imported, for lines logged after the redirection ends; a library call does not, since
    TensorFlow reads it once, at import, and would then stay quiet for the caller's later calls.
    """
    if verbose:
        yield
        return
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    if whole_process:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logger = logging.getLogger("tensorflow")
    logger_level = logger.level
    logger.setLevel(logging.ERROR)
    with warnings.catch_warnings(), _fd2_to_devnull():
        warnings.filterwarnings("ignore", module=r"(tensorflow|tf_keras|keras|tensorflow_hub)")
        try:
            yield
        finally:
            logger.setLevel(logger_level)
            if level is None:
                os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)


@contextlib.contextmanager
def _fd2_to_devnull() -> Iterator[None]:
    try:
        if sys.stderr.fileno() != 2:
            raise ValueError
    except (AttributeError, OSError, ValueError):
        yield  # stderr is captured in-process (tests): nothing native to hide
        return
    sys.stderr.flush()
    real = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    previous = sys.stderr
    sys.stderr = os.fdopen(real, "w", buffering=1, encoding="utf-8", errors="backslashreplace")
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)
        sys.stderr.close()  # closes `real`; fd 2 keeps the terminal
        sys.stderr = previous
