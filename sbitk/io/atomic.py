"""Atomic outputs: a file or directory appears whole under its name, or not at all.

Every output sbitk writes goes through here. The content is written to a temporary sibling in the
same directory (same filesystem, so the final :func:`os.replace` is a single atomic rename),
flushed and fsynced, then renamed over the target, and the directory entry is fsynced too. An
interrupt at any point (Ctrl-C, a killed process, a full disk) leaves the target as it was: absent,
or the previous complete version. A killed process may leave a hidden temporary sibling named
``.<name>.<random>.sbitk-tmp``; it is never read and can be deleted.

An existing output is never replaced unless ``force=True``: the caller gets an
:class:`OutputExistsError` naming the path and ``--force``.

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "result.txt"
    >>> _ = write_text(out, "hello\\n")
    >>> out.read_text()
    'hello\\n'
    >>> try:
    ...     write_text(out, "again\\n")
    ... except OutputExistsError as err:
    ...     print(str(err).endswith("pass --force (force=True) to overwrite it"))
    True
    >>> _ = write_text(out, "again\\n", force=True)
    >>> out.read_text()
    'again\\n'
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from sbitk.errors import SbitkError

__all__ = [
    "OutputError",
    "OutputExistsError",
    "atomic_directory",
    "atomic_file",
    "atomic_path",
    "check_not_input",
    "check_output",
    "write_bytes",
    "write_text",
]

_TMP_SUFFIX = ".sbitk-tmp"


class OutputError(SbitkError, OSError):
    """An output path cannot be written (no permission, a file where a directory should be)."""

    def __str__(self) -> str:  # OSError would format (errno, strerror) tuples
        return str(self.args[0]) if self.args else ""


class OutputExistsError(OutputError, FileExistsError):
    """The output exists already and ``force`` was not given."""


def check_output(path: str | os.PathLike, *, force: bool = False) -> Path:
    """Check that ``path`` may be written, before any expensive work starts.

    Creates the missing parent directories.

    Args:
        path: the output file or directory.
        force: allow replacing an existing output.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OutputExistsError: ``path`` exists and ``force`` is false.
        OutputError: the parent cannot be created or written to.
    """
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(
            f"output {path} already exists; pass --force (force=True) to overwrite it"
        )
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        raise OutputError(
            f"cannot write output {path}: a parent of it is not a directory ({err.filename})"
        ) from None
    except OSError as err:
        raise OutputError(
            f"cannot write output {path}: cannot create directory {parent} ({err.strerror})"
        ) from None
    if not parent.is_dir():
        raise OutputError(f"cannot write output {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write output {path}: directory {parent} is not writable")
    return path


def check_not_input(output: str | os.PathLike, **inputs: str | os.PathLike | None) -> None:
    """Refuse an output that is one of the inputs, or lies inside an input directory.

    ``force`` replaces an existing output; it must never replace what the step reads (a model
    file overwritten by its own samples, a bank by a model trained on it).

    Args:
        output: The output path.
        **inputs: The input paths by what they are (``model=...``, ``bank=...``); ``None``
            values are skipped.

    Raises:
        OutputError: ``output`` resolves to an input, or to a path inside an input directory.
    """
    out = Path(output).resolve()
    for what, value in inputs.items():
        if value is None or not isinstance(value, str | os.PathLike):
            continue
        source = Path(value).resolve()
        same = out == source or (out.exists() and source.exists() and out.samefile(source))
        if same or (source.is_dir() and source in out.parents):
            where = "is" if same else "lies inside"
            raise OutputError(
                f"output {output} {where} the {what.replace('_', ' ')} {value} this step reads; "
                "choose another output path"
            )


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_directory(Path(dirpath))


def _temp_name(path: Path) -> str:
    return f".{path.name}."


def _temp_sibling(path: Path) -> Path:
    return path.parent / f"{_temp_name(path)}{secrets.token_hex(8)}{_TMP_SUFFIX}"


def _mkstemp(path: Path) -> Path:
    """Create an empty temporary sibling of ``path`` with the permissions of any new file.

    The mode 0o666 is given to ``open`` itself, which applies the process umask: unlike reading
    the umask with :func:`os.umask`, this changes no process-wide state that other threads see.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = _temp_sibling(path)
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        except OSError as err:
            raise OutputError(f"cannot write output {path}: {err.strerror}") from None
        os.close(fd)
        return tmp
    raise OutputError(f"cannot write output {path}: no free temporary name in {path.parent}")


def _mkdtemp(path: Path) -> Path:
    """Create a temporary sibling directory of ``path``, mode 0o777 less the umask."""
    for _ in range(100):
        tmp = _temp_sibling(path)
        try:
            os.mkdir(tmp, 0o777)
        except FileExistsError:
            continue
        except OSError as err:
            raise OutputError(f"cannot write output {path}: {err.strerror}") from None
        return tmp
    raise OutputError(f"cannot write output {path}: no free temporary name in {path.parent}")


def _replace(tmp: Path, path: Path) -> None:
    if path.is_dir() and not tmp.is_dir():
        raise OutputError(f"cannot write output {path}: it is a directory, expected a file")
    try:
        os.replace(tmp, path)
    except OSError as err:
        raise OutputError(f"cannot write output {path}: {err.strerror}") from None
    _fsync_directory(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Give a temporary file path that becomes ``path`` when the block succeeds.

    For libraries that insist on writing to a file name themselves (NetCDF, Parquet): write to
    the yielded path, and on leaving the block without an exception the file is fsynced and
    renamed to ``path``. On an exception the temporary file is removed and ``path`` is untouched.

    Args:
        path: the final output file.
        force: allow replacing an existing file.

    Yields:
        The temporary path, in the same directory as ``path``.

    Raises:
        OutputExistsError: ``path`` exists and ``force`` is false.
        OutputError: ``path`` cannot be written.
    """
    path = check_output(path, force=force)
    tmp = _mkstemp(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if path.exists() and not force:  # appeared while we were writing
            raise OutputExistsError(
                f"output {path} already exists; pass --force (force=True) to overwrite it"
            )
        _replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike, mode: str = "wb", *, force: bool = False, encoding: str | None = None
) -> Iterator[IO]:
    """Open a file for writing that appears at ``path`` only once it is complete.

    Args:
        path: the final output file.
        mode: ``"wb"`` or ``"w"`` (text, UTF-8 unless ``encoding`` says otherwise).
        force: allow replacing an existing file.
        encoding: text encoding for ``mode="w"``.

    Yields:
        The open temporary file.

    Raises:
        OutputExistsError: ``path`` exists and ``force`` is false.
        OutputError: ``path`` cannot be written, or ``mode`` is not a write mode.
    """
    if mode not in ("w", "wb"):
        raise OutputError(f"atomic_file mode must be 'w' or 'wb', got {mode!r}")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    with atomic_path(path, force=force) as tmp:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_bytes(path: str | os.PathLike, data: bytes, *, force: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_file(path, "wb", force=force) as f:
        f.write(data)
    return Path(path)


def write_text(
    path: str | os.PathLike, text: str, *, force: bool = False, encoding: str = "utf-8"
) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_file(path, "w", force=force, encoding=encoding) as f:
        f.write(text)
    return Path(path)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Give a temporary directory that becomes ``path`` when the block succeeds.

    A directory cannot be swapped for another in one rename when the target exists, so with
    ``force`` the old directory is first renamed aside and removed only after the new one is in
    place. An interrupt between the two renames leaves the old content complete under
    ``.<name>.<random>.sbitk-old``: nothing is lost, and ``path`` is never half-written.

    Args:
        path: the final output directory.
        force: allow replacing an existing directory (or file).

    Yields:
        The temporary directory, in the same parent as ``path``.

    Raises:
        OutputExistsError: ``path`` exists and ``force`` is false.
        OutputError: ``path`` cannot be written.
    """
    path = check_output(path, force=force)
    tmp = _mkdtemp(path)
    old: Path | None = None
    try:
        yield tmp
        _fsync_tree(tmp)
        if path.exists() or path.is_symlink():
            if not force:
                raise OutputExistsError(
                    f"output {path} already exists; pass --force (force=True) to overwrite it"
                )
            old = path.parent / f"{_temp_name(path)}{secrets.token_hex(6)}.sbitk-old"
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except OSError as err:
            if old is not None:  # put the previous output back
                os.replace(old, path)
                old = None
            raise OutputError(f"cannot write output {path}: {err.strerror}") from None
        _fsync_directory(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    old.unlink()
