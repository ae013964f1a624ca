"""The output lifecycle of every command that writes a store: output paths checked, one writer per output
(a lock), and a store created, resumed, refused or replaced."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal, Sequence

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
    """Whether the folder ``path`` is a Zarr group or array (it has Zarr v2 metadata files)."""
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


@dataclass
class OutputPlan:
    """What writing a store of ``meta`` at ``path`` will do, decided by :func:`plan_output` before any work.

    ``state``: ``"new"`` (nothing there yet, or a store that :meth:`open` replaces: ``replaces``),
    ``"resumed"`` (an interrupted store of the same identity, kept and completed) or ``"complete"``
    (nothing to do). Nothing is written or removed until :meth:`open`.
    """

    path: Path
    meta: DatasetMeta
    state: Literal["new", "resumed", "complete"]
    existing: LadderStore | None = None  # the store at ``path`` now, if any
    replaces: bool = False  # open() first removes ``existing`` (another identity's store, or --overwrite)
    store: LadderStore | None = None  # set by open()
    created: bool = False  # open() made a fresh store at ``path`` (what writing_output may discard)

    def open(self) -> LadderStore:
        """The store to write: the existing one when resumed or complete; else a fresh one (replacing
        ``existing`` when ``replaces``) holding only ``meta``."""
        if self.store is None:
            if self.state != "new":
                self.store = self.existing
            else:
                if self.replaces:
                    shutil.rmtree(self.path)
                elif self.path.is_dir():  # an empty folder (plan_output refused any other)
                    self.path.rmdir()
                root = open_checked_group(self.path, "w")
                put_meta(root, self.meta)
                self.store, self.created = LadderStore(self.path, root, self.meta), True
        assert self.store is not None
        return self.store


def plan_output(path: str | Path, meta: DatasetMeta, *, overwrite: bool = False, replace_stale: bool = False,
                keep: Sequence[str | Path] = (), resumable: Callable[[LadderStore], bool] | None = None,
                made_from: str = "a different manifest") -> OutputPlan:
    """Decide, before any work and writing nothing, what becomes of the output store ``path`` for ``meta``.

    A store of the same identity (``meta.manifest_sha256``) is complete (nothing to do) or resumed, unless
    ``overwrite`` (rebuild it) or ``resumable(store)`` says it cannot be (rebuilt too: e.g. an ingestion
    interrupted before every field was planned). A store of another identity is refused in one line
    naming ``made_from``, unless ``overwrite`` or ``replace_stale`` (for a writer that owns the folder,
    e.g. a study). Never replaced: a path that is not a ladder store (an empty folder is taken), a store
    of another kind (``meta.source``), one holding other files, a store reached through a symbolic link,
    one of the ``keep`` paths (the command's inputs); no store is made inside another (see
    :func:`check_output_store`); a parent folder that cannot be written is refused now.
    """
    path = Path(path)
    check_output_store(path, meta.source, replacing=False, keep=keep)
    if path.exists() and looks_like_ladder(path):
        existing = open_ladder(path, require_complete=False)
        if existing.meta.source != meta.source:
            raise UserError(f"{path}: holds a {existing.meta.source} store; this command writes {meta.source} stores "
                            "and never replaces another kind: choose another output path")
        if existing.meta.manifest_sha256 == meta.manifest_sha256 and not overwrite:
            if existing.meta.status == "complete":
                return OutputPlan(path, meta, "complete", existing)
            if resumable is None or resumable(existing):
                return OutputPlan(path, meta, "resumed", existing)
        elif not (overwrite or replace_stale):
            raise UserError(f"{path}: holds a store made from {made_from}; pass --overwrite to replace it or choose another output path")
        check_output_store(path, meta.source, replacing=True, keep=keep)
        refuse_foreign_files(existing)
        ensure_writable_parent(path)
        return OutputPlan(path, meta, "new", existing, replaces=True)
    if path.exists() and any(path.iterdir()):
        raise UserError(f"{path}: exists and is not a dehaze ladder store; choose another output path")
    ensure_writable_parent(path)
    return OutputPlan(path, meta, "new")


@contextlib.contextmanager
def writing_output(path: str | Path, meta: DatasetMeta, *, overwrite: bool = False, replace_stale: bool = False,
                   keep: Sequence[str | Path] = (), resumable: Callable[[LadderStore], bool] | None = None,
                   made_from: str = "a different manifest", discard_on_error: bool = False,
                   what: str = "-o") -> Iterator[OutputPlan]:
    """The output lifecycle of a command that writes the store ``path``: hold its lock (:func:`output_lock`:
    a second writer is refused), decide what becomes of it (:func:`plan_output`, same keywords) and yield
    the plan; the command calls ``plan.open()`` when it is ready to write.

    ``discard_on_error``: a store this run created is removed if the block fails (for a writer whose
    partial store cannot be resumed), except on Ctrl-C, which keeps finished fields for the rerun.
    """
    with output_lock(path, what):
        plan = plan_output(path, meta, overwrite=overwrite, replace_stale=replace_stale, keep=keep,
                           resumable=resumable, made_from=made_from)
        try:
            yield plan
        except KeyboardInterrupt:
            raise
        except BaseException:
            if discard_on_error and plan.created:
                shutil.rmtree(plan.path, ignore_errors=True)
            raise


def create_ladder(path: str | Path, meta: DatasetMeta, *, overwrite: bool = False,
                  replace_stale: bool = False, keep: Sequence[str | Path] = ()) -> tuple[LadderStore, str]:
    """Create a store, or reopen an interrupted one made from the same manifest, without a lock (see
    :func:`writing_output` for commands): :func:`plan_output` then :meth:`OutputPlan.open`.

    Returns ``(store, state)`` with state ``"new"``, ``"resumed"`` or ``"complete"``.
    """
    plan = plan_output(path, meta, overwrite=overwrite, replace_stale=replace_stale, keep=keep)
    return plan.open(), plan.state


def refuse_foreign_files(store: LadderStore) -> None:
    """Refuse to replace a store holding anything a dehaze store does not (the user's files)."""
    fields = set(store.meta.fields)
    foreign = sorted(p.name for p in store.path.iterdir()
                     if not (p.name in (".zattrs", ".zgroup") or (p.name in fields and p.is_dir() and not p.is_symlink())))
    if foreign:
        raise UserError(f"{store.path}: holds files that are not part of the store ({', '.join(foreign[:3])}"
                        f"{', ...' if len(foreign) > 3 else ''}); move them out first: --overwrite replaces only what dehaze wrote")
