"""Atomic outputs: refusal without force, clear errors, and no half-written file after a kill."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sbitk.errors import SbitkError
from sbitk.io.atomic import (
    OutputError,
    OutputExistsError,
    atomic_directory,
    atomic_file,
    atomic_path,
    check_not_input,
    check_output,
    write_bytes,
    write_text,
)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_write_then_refuse_then_force(tmp_path):
    out = tmp_path / "a.txt"
    write_text(out, "one")
    with pytest.raises(OutputExistsError) as info:
        write_text(out, "two")
    assert isinstance(info.value, SbitkError)
    assert str(out) in str(info.value) and "--force" in str(info.value)
    assert out.read_text() == "one"
    write_text(out, "two", force=True)
    assert out.read_text() == "two"
    assert _leftovers(tmp_path) == []


def test_outputs_get_ordinary_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        out = write_text(tmp_path / "a.txt", "x")
        with atomic_directory(tmp_path / "d") as d:
            (d / "f").write_text("y")
    finally:
        os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_outputs_never_touch_the_process_umask(tmp_path, monkeypatch):
    """Reading the umask by setting it races with other threads creating files: outputs get
    their mode from the open and mkdir calls instead, which apply the umask themselves."""
    mask = os.umask(0o027)
    try:

        def forbidden(_mask):
            raise AssertionError("os.umask called: process-wide state changed")

        monkeypatch.setattr(os, "umask", forbidden)
        out = write_text(tmp_path / "a.txt", "x")
        with atomic_path(tmp_path / "b.nc") as tmp:
            tmp.write_bytes(b"y")
        with atomic_directory(tmp_path / "d") as d:
            (d / "f").write_text("y")
        monkeypatch.undo()
    finally:
        os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "b.nc").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o750
    assert _leftovers(tmp_path) == []


def test_an_output_that_is_an_input_is_refused(tmp_path):
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"weights")
    bank = tmp_path / "bank.zarr"
    bank.mkdir()
    with pytest.raises(OutputError, match="is the model file"):
        check_not_input(model, model_file=model, observed_data_file=tmp_path / "obs.csv")
    with pytest.raises(OutputError, match="is the model file"):
        check_not_input(tmp_path / "." / "model.safetensors", model_file=model)
    (tmp_path / "link.safetensors").symlink_to(model)
    with pytest.raises(OutputError, match="is the model file"):
        check_not_input(tmp_path / "link.safetensors", model_file=model)
    with pytest.raises(OutputError, match="is the bank"):
        check_not_input(bank, bank=bank)
    with pytest.raises(OutputError, match="lies inside the bank"):
        check_not_input(bank / "model.safetensors", bank=bank)
    check_not_input(tmp_path / "other.nc", model_file=model, bank=bank, observed_data_file=None)
    assert model.read_bytes() == b"weights"


def test_creates_missing_parents(tmp_path):
    out = tmp_path / "runs" / "demo" / "x.bin"
    write_bytes(out, b"\x00\x01")
    assert out.read_bytes() == b"\x00\x01"


def test_parent_is_a_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = blocker / "x.txt"
    with pytest.raises(OutputError) as info:
        write_text(out, "x")
    assert str(out) in str(info.value) and "not a directory" in str(info.value)


def test_output_that_is_a_directory_is_a_clear_error(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    with pytest.raises(OutputError) as info:
        write_text(out, "x", force=True)
    assert str(out) in str(info.value) and "directory" in str(info.value)
    assert out.is_dir() and _leftovers(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_is_a_clear_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_output(ro / "x.txt")
    finally:
        ro.chmod(0o700)


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux sysfs")
def test_unwritable_filesystem_is_a_clear_error():
    # sysfs refuses new files even to root, unlike a chmod-ed directory
    for out in (Path("/sys/sbitk-output.txt"), Path("/sys/sbitk-output.d")):
        with pytest.raises(OutputError) as info:
            if out.suffix:
                write_text(out, "x")
            else:
                with atomic_directory(out):
                    pass
        assert str(out) in str(info.value) and "\n" not in str(info.value)
        assert not out.exists()


def test_exception_inside_block_keeps_old_content_and_cleans_up(tmp_path):
    out = tmp_path / "a.txt"
    out.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(out, "w", force=True) as f:
            f.write("partial")
            raise RuntimeError("interrupted")
    assert out.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_atomic_path_for_libraries_that_write_by_name(tmp_path):
    out = tmp_path / "lib.out"
    with atomic_path(out) as tmp:
        assert tmp.parent == tmp_path and tmp != out
        tmp.write_bytes(b"abc")
        assert not out.exists()
    assert out.read_bytes() == b"abc"


def test_bad_mode_is_refused(tmp_path):
    with pytest.raises(OutputError, match="mode"):
        with atomic_file(tmp_path / "a", "a"):
            pass


def test_directory_write_refuse_and_replace(tmp_path):
    out = tmp_path / "run"
    with atomic_directory(out) as d:
        (d / "a.txt").write_text("1")
        (d / "sub").mkdir()
        (d / "sub" / "b.txt").write_text("2")
        assert not out.exists()
    assert (out / "sub" / "b.txt").read_text() == "2"
    with pytest.raises(OutputExistsError, match="--force"):
        with atomic_directory(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_directory(out, force=True) as d:
            (d / "a.txt").write_text("new")
            raise RuntimeError("interrupted")
    assert (out / "a.txt").read_text() == "1"
    with atomic_directory(out, force=True) as d:
        (d / "c.txt").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["c.txt"]
    assert _leftovers(tmp_path) == []


_WRITER = textwrap.dedent(
    """
    import signal, sys, time
    from sbitk.io.atomic import atomic_file, atomic_directory
    # Interrupts raise KeyboardInterrupt even where the parent ignores SIGINT (a background job
    # of a non-interactive shell does, and a child inherits that).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    old, new, kind = sys.argv[1:]
    chunk = b"n" * 65536
    if kind == "file":
        with atomic_file(old, "wb", force=True) as f, atomic_file(new, "wb") as g:
            for i in range(10_000):
                f.write(chunk)
                g.write(chunk)
                f.flush()
                g.flush()
                if i == 2:
                    print("writing", flush=True)
                time.sleep(0.01)
    else:
        with atomic_directory(old, force=True) as d, atomic_directory(new) as e:
            for i in range(10_000):
                (d / f"part{i}.bin").write_bytes(chunk)
                (e / f"part{i}.bin").write_bytes(chunk)
                if i == 2:
                    print("writing", flush=True)
                time.sleep(0.01)
    """
)


@pytest.mark.parametrize(
    ("kind", "sig"),
    [("file", signal.SIGKILL), ("directory", signal.SIGKILL), ("file", signal.SIGINT)],
    ids=["file-kill", "directory-kill", "file-interrupt"],
)
def test_killed_writer_leaves_old_output_whole_and_no_new_output(tmp_path, kind, sig):
    old = tmp_path / ("old.bin" if kind == "file" else "old.d")
    new = tmp_path / ("new.bin" if kind == "file" else "new.d")
    if kind == "file":
        old.write_bytes(b"old content")
    else:
        old.mkdir()
        (old / "old.bin").write_bytes(b"old content")
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(old), str(new), kind],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout.readline().strip() == b"writing"
    # the writer is mid-way: its temporary outputs hold data, the targets are untouched
    tmp = [p for p in tmp_path.iterdir() if p.name.endswith(".sbitk-tmp")]
    assert len(tmp) == 2
    proc.send_signal(sig)
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode != 0
    assert not new.exists()
    if kind == "file":
        assert old.read_bytes() == b"old content"
    else:
        assert sorted(p.name for p in old.iterdir()) == ["old.bin"]
        assert (old / "old.bin").read_bytes() == b"old content"
    leftovers = _leftovers(tmp_path)
    if sig == signal.SIGINT:  # Python unwinds and removes its temporary outputs
        assert leftovers == []
    else:  # SIGKILL gives no chance to clean up; only the hidden temporaries remain
        assert len(leftovers) == 2 and all(n.endswith(".sbitk-tmp") for n in leftovers)
