"""Which process holds what. A run records the process that runs it (host, pid, start time), and every
exatrack command keeps its temporary files in one folder named the same way. What a killed process
left behind (kill -9, the OOM killer, a dropped SSH session) can then be told apart from what a live
one still holds: a run stuck RUNNING, a half-written checkpoint of gigabytes in the temp folder.

A pid alone would not do: the system hands a freed pid to the next process, so the start time must
match too. A process of another host is never judged: its pids mean nothing here.
"""

import atexit
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

TEMP_FOLDER = re.compile(r"^exatrack-(?P<host>.+)-(?P<pid>\d+)-(?P<started>\d+\.\d+)$")


def me() -> tuple[str, int, float]:
    """This process: its host, pid and start time (seconds since the epoch)."""
    import psutil

    return socket.gethostname(), os.getpid(), psutil.Process().create_time()


def gone(host: str, pid: int, started: float) -> bool:
    """True only for a process of this host that has ended (its pid free, a zombie, or another's now)."""
    import psutil

    if host != socket.gethostname():
        return False
    try:
        process = psutil.Process(pid)
        return process.status() == psutil.STATUS_ZOMBIE or abs(process.create_time() - started) > 1
    except psutil.NoSuchProcess:
        return True


def own_temp_folder() -> Path:
    """Point this process's temporary files (its own, MLflow's, llmcompressor's) at one folder named for
    it and removed at exit; first remove the folders of processes that are gone, whose exit never came."""
    current = Path(tempfile.gettempdir())
    if TEMP_FOLDER.match(current.name):  # already set up (a command invoked again in the same process)
        return current
    for folder in current.iterdir():
        owner = TEMP_FOLDER.match(folder.name)
        if owner and gone(owner["host"], int(owner["pid"]), float(owner["started"])):
            shutil.rmtree(folder, ignore_errors=True)
    host, pid, started = me()
    mine = current / f"exatrack-{host}-{pid}-{started:.2f}"
    mine.mkdir(exist_ok=True)
    tempfile.tempdir = str(mine)
    atexit.register(remove, mine, pid)
    return mine


def remove(folder: Path, pid: int) -> None:
    if os.getpid() == pid:  # not in a forked child: the folder is its parent's
        shutil.rmtree(folder, ignore_errors=True)


def stop_group(proc, grace_s: float = 10.0) -> None:
    """End a child started in a session of its own, with everything it started (vLLM's engine
    processes): SIGTERM to the group, SIGKILL after `grace_s`."""
    import signal
    import subprocess

    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
