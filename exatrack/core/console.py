"""What a person sees while a command works: exatrack's own progress bars, warnings and results on the
terminal; the libraries' chatter (MLflow, llmcompressor, transformers, torch: their logs, warnings and
progress bars) in the command's log file, which the command's run keeps as `logs/exatrack.log`.

The libraries write in every way there is (logging handlers, loguru on standard output for
llmcompressor, tqdm, C++), so the log file takes over the process's file descriptors 1 and 2 while
the command runs, and exatrack writes to duplicates of the terminal's. `--verbose` (or
EXATRACK_VERBOSE=1) leaves everything on the terminal.
"""

import logging
import os
import sys
from pathlib import Path

state = {"terminal": None, "out": None, "log": None, "saved": (), "verbose": False, "handlers": []}
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def start(folder: Path, verbose: bool) -> None:
    """Open the command's log in `folder` and, unless verbose, send standard error there."""
    log = open(folder / "exatrack.log", "w", encoding="utf-8", buffering=1)
    to_file = logging.StreamHandler(log)
    to_file.setFormatter(logging.Formatter(FORMAT))
    ours = logging.StreamHandler(Stream())
    ours.setLevel(logging.WARNING)  # exatrack's own warnings, as a person should read them: each once
    ours.addFilter(Once())
    state.update(log=log, verbose=verbose, terminal=sys.stderr, handlers=[(logging.getLogger(), to_file),
                                                                          (logging.getLogger("exatrack"), ours)])
    for logger, handler in state["handlers"]:
        logger.addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    logging.captureWarnings(True)  # the libraries' warnings go to the log, as their log lines do
    if verbose or not redirectable():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    state["saved"] = (os.dup(1), os.dup(2))
    state["out"], state["terminal"] = (open(os.dup(fd), "w", encoding="utf-8", buffering=1, errors="replace")
                                       for fd in (1, 2))
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)


def redirectable() -> bool:
    """Only a process whose standard streams are its descriptors 1 and 2 (not a test runner's buffers)."""
    try:
        return sys.stdout.fileno() == 1 and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


def stop() -> None:
    """The standard streams back on the terminal (before an error line is printed there), the log
    closed and removed: the command's run has kept it."""
    if state["saved"]:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), state["saved"]):
            os.dup2(saved, fd)
            os.close(saved)
        state["out"].close()
        state["terminal"].close()
    for logger, handler in state["handlers"]:
        logger.removeHandler(handler)
    logging.captureWarnings(False)
    if state["log"] is not None:
        state["log"].close()
        Path(state["log"].name).unlink(missing_ok=True)
    state.update(terminal=None, out=None, log=None, saved=(), handlers=[])


class Once(logging.Filter):
    """A warning said for every model of a session (KoMT-Bench skipped, say) reaches the terminal once;
    the log keeps every one."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


class Stream:
    """Writes to whatever the terminal is now, so a handler made once outlives a redirect."""

    def write(self, text: str) -> int:
        return terminal().write(text)

    def flush(self) -> None:
        terminal().flush()


def terminal():
    """Where exatrack's own progress and messages go."""
    return state["terminal"] or sys.stderr


def verbose() -> bool:
    return state["verbose"]


def log_path() -> Path | None:
    return Path(state["log"].name) if state["log"] is not None else None


def bar(*args, **kwargs):
    """A progress bar on the terminal (tqdm's default, standard error, is the log while a command runs)."""
    from tqdm.auto import tqdm

    return tqdm(*args, file=terminal(), dynamic_ncols=True, **kwargs)


def echo(text: str) -> None:
    """A result for the person (standard output is the log while a command runs)."""
    import click

    click.echo(text, file=state["out"])


def say(line: str) -> None:
    """A line for the person, above any progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(line, file=terminal())
