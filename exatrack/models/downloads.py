"""Artifacts of a remote tracking store (a team server, object storage) on this machine: downloaded
once per run into a cache that commands running at once share, bounded in size, and cleaned. A real
checkpoint is 1.4-2.4 GB, and a fresh copy per use used to fill the temp folder. A local store's
artifacts are read in place and never copied.

Each run's entry is fetched under its own lock, into a fixed partial folder renamed into place when
complete, so a killed download leaves no half artifact and the next fetch of that run clears it.
A process that uses an entry holds a shared lock on it until it exits; the least recently used
entries nobody holds go once the cache passes EXATRACK_ARTIFACT_CACHE_GB (20 by default).
"""

import fcntl
import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

from exatrack.core.basics import ExatrackError, cache_dir

DEFAULT_GB = 20
IN_USE = ".in-use"  # in each entry: shared-locked by every process using it; its mtime is the last use
held = {}  # entry -> the open file through which this process holds it


def root() -> Path:
    return cache_dir() / "artifacts"


def local_path(run, artifact: str, ref: str) -> Path:
    """Where `artifact` of `run` is on this machine: in place for a local store, else in the cache."""
    from filelock import FileLock

    location = urlparse(run.info.artifact_uri)
    if location.scheme in ("", "file"):
        return Path(location.path) / artifact
    entry = root() / run.info.run_id
    entry.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{entry}.lock"):
        if not (entry / artifact).exists():
            fetch(run.info.run_id, artifact, entry, ref)
        hold(entry)
    evict(limit_bytes())
    return entry / artifact


def fetch(run_id: str, artifact: str, entry: Path, ref: str) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    partial = entry / ".partial"
    shutil.rmtree(partial, ignore_errors=True)  # a download killed midway; we hold the entry's lock
    try:
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=str(partial))
        (entry / artifact).parent.mkdir(parents=True, exist_ok=True)
        (partial / artifact).rename(entry / artifact)
    except (MlflowException, OSError) as err:
        raise ExatrackError(f"cannot fetch {ref} from the tracking store ({str(err).splitlines()[0][:200]}); "
                            "check the run id and MLFLOW_TRACKING_URI")
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def hold(entry: Path) -> None:
    """Mark the entry used now, and keep it from eviction while this process lives."""
    if entry not in held:
        held[entry] = open(entry / IN_USE, "a")
        fcntl.flock(held[entry], fcntl.LOCK_SH)
    os.utime(entry / IN_USE)


def limit_bytes() -> float:
    value = os.environ.get("EXATRACK_ARTIFACT_CACHE_GB") or DEFAULT_GB
    try:
        return float(value) * 2**30
    except ValueError:
        raise ExatrackError(f"EXATRACK_ARTIFACT_CACHE_GB={value} is not a size in GB; set it to a number, e.g. 20")


def evict(limit: float) -> list[Path]:
    """Remove the least recently used entries that no process holds until the cache is within `limit`."""
    from filelock import FileLock, Timeout

    entries = usage()
    total, removed = sum(bytes_ for _, bytes_, _ in entries), []
    for _, bytes_, entry in entries:
        if total <= limit:
            break
        try:
            with FileLock(f"{entry}.lock", timeout=0), open(entry / IN_USE, "a") as marker:
                fcntl.flock(marker, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(entry)
        except (Timeout, OSError):  # being fetched, in use, or removed by another command meanwhile
            continue
        total -= bytes_
        removed.append(entry)
    return removed


def usage() -> list[tuple[float, int, Path]]:
    """(last use, bytes, entry) for every entry, least recently used first."""
    found = []
    for entry in filter(Path.is_dir, root().iterdir()):
        try:
            found.append((last_used(entry), size(entry), entry))
        except FileNotFoundError:  # removed by another command meanwhile
            continue
    return sorted(found)


def last_used(entry: Path) -> float:
    marker = entry / IN_USE
    return (marker if marker.exists() else entry).stat().st_mtime


def size(entry: Path) -> int:
    return sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
