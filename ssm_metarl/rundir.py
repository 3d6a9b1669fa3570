"""Run directories that never mix two runs, and output checks made before any compute is spent.

A run is written into a staging sibling ``.NAME.partial`` of its output ``NAME`` and renamed to
``NAME`` only when it is complete. An interrupt therefore leaves ``NAME`` as it was (the previous
complete run, or nothing) and the interrupted run, with its resumable checkpoint, in
``.NAME.partial``. A non-empty ``NAME`` is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def staging_dir(output: Path) -> Path:
    """Where the run for ``output`` is written until it is complete."""
    return output.parent / f".{output.name}.partial"


def output_of_staging(path: Path) -> Path:
    """``runs/.x.partial`` -> ``runs/x``; any other path is returned as it is."""
    name = path.name
    if name.startswith(".") and name.endswith(".partial") and len(name) > len("..partial"):
        return path.parent / name[1:-len(".partial")]
    return path


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_writable_dir(path: Path, flag: str) -> None:
    """``path`` is (or can be created as) a directory we can write into; else ``ValueError`` naming ``flag``."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {str(path)!r} is an existing file; expected a directory (or a new path)")
    _probe(_nearest_existing(path), flag, path)


def check_writable_file(path: Path, flag: str) -> None:
    """``path`` is (or can be created as) a file we can write; else ``ValueError`` naming ``flag``."""
    if path.is_dir():
        raise ValueError(f"{flag} {str(path)!r} is a directory; expected a file path")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise ValueError(f"{flag} {str(path)!r} is not writable")
        return
    _probe(_nearest_existing(path.parent), flag, path)


def _probe(directory: Path, flag: str, target: Path) -> None:
    if not directory.is_dir():
        raise ValueError(f"{flag} {str(target)!r}: {str(directory)!r} is a file, so no directory can be made there")
    try:  # os.access is not enough (root, read-only mounts): really create and remove a file
        fd, name = tempfile.mkstemp(prefix=".ssm-metarl-probe-", dir=directory)
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise ValueError(f"{flag} {str(target)!r} is not writable: cannot create files in {str(directory)!r} "
                         f"({err.strerror})") from None


def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def start(output: Path, *, overwrite: bool, resume: bool, flag: str = "--output") -> Path:
    """Check ``output`` and return the staging directory to write the run into.

    - a fresh run refuses a non-empty ``output`` and a left-over interrupted run unless ``overwrite``;
    - ``resume`` needs the interrupted run's staging directory.
    """
    check_writable_dir(output, flag)
    staging = staging_dir(output)
    if resume:
        if not staging.is_dir():
            raise ValueError(f"--resume {str(output)!r}: there is no interrupted run to resume "
                             f"(expected its staging directory {str(staging)!r})")
        return staging
    if output.exists() and not is_empty_dir(output) and not overwrite:
        raise ValueError(f"{flag} {str(output)!r} already holds a run; pass --overwrite to replace it "
                         f"(it is replaced only once the new run is complete) or choose a new directory")
    if staging.exists():
        if not overwrite:
            raise ValueError(f"an interrupted run is waiting in {str(staging)!r}: continue it with "
                             f"'ssm-metarl train --resume {output}', or pass --overwrite to discard it")
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def finish(staging: Path, output: Path) -> None:
    """Put the complete run in ``staging`` at ``output``, replacing what was there.

    Two renames: at any instant ``output`` is the previous complete run, absent, or the new one.
    """
    old = None
    if output.exists():
        old = output.parent / f".{output.name}.old-{os.getpid()}"
        os.replace(output, old)
    os.replace(staging, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
