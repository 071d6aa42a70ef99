"""Writing files so that nothing is ever half-written: a temporary name first, then ``os.replace``;
and checking, before any work, that an output can be written at all."""
from __future__ import annotations

import ctypes
import glob
import itertools
import os
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from vitclassifier.errors import UserError


def recover_interrupted_write(directory: Path, is_whole: Callable[[Path], bool]) -> None:
    """Where directories cannot be swapped atomically, a crash between atomic_write_dir's two renames
    leaves the previous copy in NAME.old and nothing at NAME: put it back, if ``is_whole`` says it is
    complete (a partial NAME.old is what a crash while removing it leaves). Safe before any read: it
    only ever renames a whole copy back to the name it had."""
    directory = Path(directory)
    old = directory.with_name(directory.name + ".old")
    if not directory.exists() and old.is_dir() and is_whole(old):
        old.rename(directory)


def remove_write_leftovers(directory: Path, is_whole: Callable[[Path], bool]) -> None:
    """Before writing into our own output folder: remove NAME.tmp (a write that never finished) and,
    when NAME is in place, NAME.old (a copy a crash left half-removed). Only for folders this tool
    writes."""
    directory = Path(directory)
    recover_interrupted_write(directory, is_whole)
    old, tmp = directory.with_name(directory.name + ".old"), directory.with_name(directory.name + ".tmp")
    for leftover in ([tmp, old] if directory.is_dir() else [tmp]):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def exchange_paths(first: Path, second: Path) -> bool:
    """Swap two existing directories in one atomic step (Linux renameat2 with RENAME_EXCHANGE), so that
    neither name is ever missing. False where the system cannot (other kernels, other file systems)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (on POSIX; Windows has no directory fsync)."""
    if os.name == "posix":
        handle = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc/self/status), else by
    setting it and putting it back at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_default_mode(path: Path) -> None:
    """The permissions a plain ``open`` or ``mkdir`` would have given ``path`` (0644 and 0755 with the
    usual umask 022), and the same for everything in it: some writers (safetensors, temporary-file
    based ones) create their files as 0600, which would hide a model from the user's other
    accounts, groups and services, unlike every other file we write."""
    mask = current_umask()
    path = Path(path)
    for item in [path, *(path.rglob("*") if path.is_dir() else ())]:
        if not item.is_symlink():
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


def atomic_write_dir(
    directory: Path, write: Callable[[Path], None], is_whole: Callable[[Path], bool]
) -> None:
    """Call ``write(tmp_dir)``, then put tmp_dir in place of ``directory``. On Linux the two are
    exchanged in one atomic step, so ``directory`` always exists, whole, for any reader (e.g.
    transformers.pipeline) and any crash. Elsewhere two renames are used, with the complete old copy
    in ``NAME.old`` between them (put back by recover_interrupted_write, if ``is_whole`` says it is
    complete). If writing fails (disk full, ...), the temporary copy is removed and the old one stays."""
    directory = Path(directory)
    remove_write_leftovers(directory, is_whole)
    tmp, old = directory.with_name(directory.name + ".tmp"), directory.with_name(directory.name + ".old")
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        give_default_mode(tmp)
        for file in tmp.iterdir():
            fsync_file(file)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if directory.exists() and exchange_paths(tmp, directory):
        fsync_dir(directory.parent)
        shutil.rmtree(tmp, ignore_errors=True)  # now the previous checkpoint
        return
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    fsync_dir(directory.parent)
    shutil.rmtree(old, ignore_errors=True)


def temp_name(path: Path) -> Path:
    """The temporary sibling a file is written under before ``os.replace`` puts it in place."""
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def write_problem(path: Path, error: BaseException) -> UserError:
    """A failed write (disk full, read-only, I/O error) as one line; the old file, if any, is intact."""
    text = str(error).strip()
    reason = getattr(error, "strerror", None) or (text.splitlines()[0] if text else type(error).__name__)
    kept = "the previous file is intact" if Path(path).exists() else "nothing was written"
    return UserError(f"could not write {path}: {reason}; {kept}")


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_via_temp(path: Path, write: Callable[[Path], None], durable: bool = True,
                   opened: bool = False) -> None:
    """Call ``write(tmp)`` to write the whole file at a temporary sibling, (``durable``) fsync it,
    then ``os.replace`` it onto ``path``: readers see the old file or the new, never half of one.
    ``opened``: ``write`` creates the file with a plain ``open``, so it has the umask's mode already
    (give_default_mode is skipped: thousands of small files). On any failure the temporary file is
    removed; OSError and RuntimeError (what torch and the export writers raise on I/O errors) become
    a UserError saying the previous file is intact."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        write(tmp)
        if not opened:
            give_default_mode(tmp)
        if durable:
            fsync_file(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:
        tmp.unlink(missing_ok=True)
        raise write_problem(path, error) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """``text`` (UTF-8) into ``path`` through a temporary file and ``os.replace`` (UserError on failure)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``data`` into ``path`` through a temporary file and ``os.replace`` (UserError on failure)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)

    write_via_temp(path, write)


def write_files_via_temp(path: Path, write: Callable[[Path], None]) -> None:
    """For writers that put files beside ``path`` (ONNX external data, an OpenVINO IR's .bin):
    ``write(tmp_dir / path.name)`` in a hidden sibling folder, fsync every file, then move each
    one into place with ``os.replace``, ``path`` itself last. On failure the folder is removed and
    the previous files stay (UserError as in write_via_temp)."""
    path = Path(path)
    folder = path.parent / f".{temp_name(path).name}"
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.mkdir()
        write(folder / path.name)
        written = sorted(folder.iterdir(), key=lambda file: file.name == path.name)  # path last
        for file in written:
            give_default_mode(file)
        for file in written:
            fsync_file(file)
        for file in written:
            os.replace(file, path.parent / file.name)
    except (OSError, RuntimeError) as error:
        raise write_problem(path, error) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _probe_writable(folder: Path, option: str, path: Path) -> None:
    """Create and remove a one-byte file in ``folder``: read-only disks and full ones fail here."""
    probe = folder / f".{temp_name(path.absolute()).name}.probe"  # absolute: "." has no name
    try:
        with open(probe, "wb") as handle:
            handle.write(b"\0")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise UserError(f"cannot write {option} {path}: {error.strerror or error}") from None
    finally:
        probe.unlink(missing_ok=True)


def check_output_file(path: Path, option: str, overwrite: bool = True) -> None:
    """Before any work: can ``path`` be written as a file? Its folder must exist (nothing is created
    silently), ``path`` must not be a folder or a device, and must not exist unless ``overwrite``.
    A UserError names ``option`` and the way out."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; give a file name, e.g. {path / 'out'}")
    if path.exists() and not path.is_file():
        raise UserError(f"{option} {path} is not a regular file (a device or a pipe); give a file path")
    if not parent.is_dir():
        problem = "is a file, not a folder" if parent.exists() else "does not exist"
        raise UserError(f"{option} {path}: the folder {parent} {problem}; create the folder or give "
                        f"another path")
    if path.exists() and not overwrite:
        raise UserError(f"{option} {path} already exists; pass --overwrite to replace it, or give "
                        f"another path")
    _probe_writable(parent, option, path)


def check_output_folder(folder: Path, option: str) -> None:
    """Before any work: can files be written in ``folder`` (created later if missing)? It, or its
    nearest existing ancestor, must be a writable folder."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.absolute().parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == folder else f"is inside {existing}, which is a file"
        raise UserError(f"{option} {folder} {where}, not a folder; give a folder")
    _probe_writable(existing, option, folder)


def refuse_inside(path: Path, folder: Path, option: str, what: str) -> None:
    """Refuse an output ``path`` in (or at) ``folder``: writing there could destroy ``what``."""
    target, folder = Path(path).resolve(), Path(folder).resolve()
    if target == folder or target.is_relative_to(folder):
        raise UserError(f"{option} {path} would write into {what} {folder}; write it elsewhere, so "
                        f"that {what} stays intact")


def input_folder(item: str | Path) -> Path:
    """The folder an input is read from: a folder itself, a file's own folder, and for a glob the
    folder before its first wildcard (the pattern may reach anywhere below it)."""
    path = Path(item)
    if path.is_dir():
        return path
    if not path.exists() and glob.has_magic(str(item)):
        fixed = list(itertools.takewhile(lambda part: not glob.has_magic(part), path.parts))
        return Path(*fixed) if fixed else Path(".")
    return path.parent


def refuse_among_inputs(path: Path, folders: Iterable[str | Path], option: str, what: str) -> None:
    """Outputs never go among inputs: refuse ``path`` at or inside any of ``folders``, the folders
    the inputs are read from (input_folder), where its files would be read as inputs next time."""
    for folder in dict.fromkeys(map(str, folders)):
        refuse_inside(path, Path(folder), option, what)
