"""The output lifecycle of every command that writes a store: output paths checked, one writer per output
(a lock), and a store created, resumed, refused or replaced."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path
from typing import Iterator, Sequence

from dehaze.errors import UserError
from dehaze.store.chunks import open_checked_group
from dehaze.store.ladder import LadderStore, looks_like_ladder, open_ladder, put_meta
from dehaze.store.meta import DatasetMeta


def ensure_writable_parent(path: Path) -> None:
    """Fail early, before any work, if ``path`` cannot be created (no half-written output)."""
    parent = path.resolve().parent
    if not parent.exists():
        raise UserError(f"{path}: parent folder {parent} does not exist; create it first")
    if not parent.is_dir():
        raise UserError(f"{path}: {parent} is not a folder")
    probe = parent / f".dehaze-write-probe-{path.name}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        raise UserError(f"{path}: cannot write in {parent} ({exc.strerror}); choose another output path") from None


def is_zarr_node(path: Path) -> bool:
    return any((path / name).is_file() for name in (".zattrs", ".zgroup", ".zarray"))


def make_output_folder(path: str | Path, what: str, fix: str) -> Path:
    """Create the folder ``path`` for several outputs (a study, a report), or refuse it in one line: an
    existing file, a folder inside or being a Zarr store, or one that cannot be made. ``fix`` ends each message."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: exists and is a file; {what} is a folder: {fix}")
    refuse_inside_store(path, what, itself=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{path}: cannot create {what} ({exc.strerror}); {fix}") from None
    return path


def refuse_inside_store(path: str | Path, what: str, *, itself: bool = False) -> None:
    """Refuse an output ``path`` inside a Zarr store (it would nest a foreign tree in it), or, with
    ``itself``, that is one (a folder of outputs: its files would go into the store)."""
    path = Path(path)
    for candidate in (path.absolute(), path.resolve()):
        for parent in ([candidate] if itself else []) + list(candidate.parents):
            if parent.is_dir() and is_zarr_node(parent):
                where = "is" if parent == candidate else "is inside"
                raise UserError(f"{path}: {where} the Zarr store {parent}; choose {what} outside any store")


LOCK_SUFFIX = ".dehaze-lock"


def lock_file(path: str | Path) -> Path:
    """The lock file of the output ``path``: beside it (a store may be replaced or not exist yet)."""
    path = Path(path).absolute()
    return path.parent / f".{path.name}{LOCK_SUFFIX}"


@contextlib.contextmanager
def output_lock(path: str | Path, what: str = "-o") -> Iterator[None]:
    """Hold an exclusive lock on the output ``path`` while a command writes it; a second writer of the
    same path is refused in one line, naming the holder's pid.

    The lock is an ``flock`` on a file beside the output, which the kernel releases when the holder's
    process ends however it ends (a ``kill -9`` leaves no stale lock). The file is removed on release; a
    waiter that locked a removed file tries again on the new one. Where no lock file can be made (a
    missing or read-only parent folder, a path inside a store) the command runs unlocked: it writes
    nothing there either, and its own checks say why in one line.
    """
    lock = lock_file(path)
    parent = lock.parent
    if not parent.is_dir() or is_zarr_node(parent) or any(is_zarr_node(p) for p in parent.parents):
        yield
        return
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"{path}: is being written by another dehaze process (pid {holder}); wait for it to finish "
                            f"or choose another {what}") from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed this file as we opened it: lock the current one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def check_output_store(path: Path, source: str, *, replacing: bool, keep: Sequence[str | Path] = ()) -> None:
    """Refuse, before anything is written, an output store path that would destroy or corrupt what the
    user has: a symbolic link to be replaced (or dangling), a path inside a store, one of the ``keep``
    paths (the command's inputs) or a folder around one; with ``replacing``, also an existing store of
    another kind or holding files that are not part of it."""
    if path.is_symlink():
        if not path.exists():
            raise UserError(f"{path}: is a dangling symbolic link; choose another output path")
        if replacing:
            raise UserError(f"{path}: is a symbolic link (to {path.resolve()}); dehaze replaces only a real store folder, "
                            "never what a link points to: give the real path")
    refuse_inside_store(path, "an output path")
    here = path.resolve()
    for other in keep:
        other = Path(other).resolve()
        if other == here:
            raise UserError(f"{path}: is the input store; choose another output path (nothing was written)")
        if other.is_relative_to(here):
            raise UserError(f"{path}: contains the input store {other}; choose another output path (nothing was written)")
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: exists and is a file, not a ladder store; choose another output path")


def create_ladder(path: str | Path, meta: DatasetMeta, *, overwrite: bool = False,
                  replace_stale: bool = False, keep: Sequence[str | Path] = ()) -> tuple[LadderStore, str]:
    """Create a store, or reopen an interrupted one made from the same manifest.

    Returns ``(store, state)`` with state ``"new"``, ``"resumed"`` or ``"complete"``. An existing store
    from another manifest is refused unless ``overwrite`` (which also rebuilds one of the same manifest) or
    ``replace_stale`` (for a writer that owns the folder, e.g. a study: a store of the same manifest is
    reopened, one of another is replaced). A path that is not a ladder store is never deleted (nothing the
    user had is lost); neither is a store of another kind (``meta.source``), one holding other files, a
    store reached through a symbolic link, or one of the ``keep`` paths (the command's inputs); and no
    store is made inside another (see :func:`check_output_store`).
    """
    path = Path(path)
    check_output_store(path, meta.source, replacing=False, keep=keep)
    if path.exists():
        if not looks_like_ladder(path):
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
            else:
                raise UserError(f"{path}: exists and is not a dehaze ladder store; choose another output path")
        else:
            existing = open_ladder(path, require_complete=False)
            same = existing.meta.manifest_sha256 == meta.manifest_sha256
            if existing.meta.source != meta.source:
                raise UserError(f"{path}: holds a {existing.meta.source} store; this command writes {meta.source} stores "
                                "and never replaces another kind: choose another output path")
            if same and not overwrite:
                state = "complete" if existing.meta.status == "complete" else "resumed"
                return existing, state
            if not (overwrite or replace_stale):
                raise UserError(
                    f"{path}: holds a store made from a different manifest; pass --overwrite to replace it or choose another output path"
                )
            check_output_store(path, meta.source, replacing=True, keep=keep)
            refuse_foreign_files(existing)
            shutil.rmtree(path)
    ensure_writable_parent(path)
    root = open_checked_group(path, "w")
    put_meta(root, meta)
    return LadderStore(path, root, meta), "new"


def refuse_foreign_files(store: LadderStore) -> None:
    """Refuse to replace a store holding anything a dehaze store does not (the user's files)."""
    fields = set(store.meta.fields)
    foreign = sorted(p.name for p in store.path.iterdir()
                     if not (p.name in (".zattrs", ".zgroup") or (p.name in fields and p.is_dir() and not p.is_symlink())))
    if foreign:
        raise UserError(f"{store.path}: holds files that are not part of the store ({', '.join(foreign[:3])}"
                        f"{', ...' if len(foreign) > 3 else ''}); move them out first: --overwrite replaces only what dehaze wrote")
