"""Writing files: a failed write leaves the old file and no temp file, a failed command no empty folder."""

import os

import pytest

from siamdiff.core.errors import SiamdiffError
from siamdiff.core.files import atomic_write, output_folder


def test_a_serializers_own_disk_full_error_is_one_line_and_keeps_the_old_file(tmp_path):
    dest = tmp_path / "model.safetensors"
    dest.write_text("old")

    def full_disk(tmp):
        tmp.write_text("half")
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.raises(SiamdiffError, match=r"cannot write '.*model.safetensors': no space left on device$"):
        atomic_write(dest, full_disk)
    assert dest.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]

    def bug(tmp):  # not an I/O failure: stays a bug, not a user error
        raise KeyError("oops")

    with pytest.raises(KeyError):
        atomic_write(dest, bug)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are a POSIX thing")
def test_a_pipe_is_not_replaced_by_a_file(tmp_path):
    fifo = tmp_path / "out.png"
    os.mkfifo(fifo)
    with pytest.raises(SiamdiffError, match="not a regular file"):
        atomic_write(fifo, lambda tmp: tmp.write_text("x"))
    assert not fifo.is_file() and fifo.exists()


def test_an_output_folder_made_for_a_failed_command_is_removed_again(tmp_path):
    with pytest.raises(SiamdiffError):
        with output_folder(tmp_path / "new" / "deeper"):
            raise SiamdiffError("the work failed")
    assert not (tmp_path / "new").exists()  # with the folder above it that it made
    (tmp_path / "kept").mkdir()
    with pytest.raises(SiamdiffError):
        with output_folder(tmp_path / "kept"):  # a folder that was there stays
            raise SiamdiffError("the work failed")
    with pytest.raises(SiamdiffError):
        with output_folder(tmp_path / "partly") as folder:  # a folder that got files stays
            (folder / "done.png").write_text("x")
            raise SiamdiffError("the work failed")
    assert (tmp_path / "kept").is_dir() and (tmp_path / "partly" / "done.png").is_file()


HOLD = """
import sys, time
from siamdiff.core.files import exclusive
with exclusive(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def held(tmp_path):
    """Hold ``path`` locked from another process, as a second siamdiff run writing it would."""
    import subprocess
    import sys

    children = []

    def hold(path):
        child = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
        children.append(child)
        assert child.stdout.readline().strip() == "held"  # the lock is taken before the test goes on
        return child

    yield hold
    for child in children:
        child.kill()
        child.wait(timeout=30)


def test_a_second_writer_is_refused_and_the_lock_dies_with_its_holder(tmp_path, held):
    from siamdiff.core.files import exclusive

    target = tmp_path / "photos.index"
    child = held(target)
    with pytest.raises(SiamdiffError, match="being written by another siamdiff process"):
        with exclusive(target):
            pass
    child.kill()
    child.wait(timeout=30)
    with exclusive(target):  # released when the holder died, however it died
        with exclusive(target):  # and nested use in one process holds it once
            pass


def test_index_and_train_refuse_an_output_another_run_writes(tmp_path, held, capsys, digit_folder):
    from siamdiff.cli import main

    index = tmp_path / "digits.index"
    held(index)
    assert main(["index", str(digit_folder), "--out", str(index)]) == 2
    err = capsys.readouterr().err
    assert "being written by another siamdiff process" in err and "--out" in err and err.count("\n") == 1
    assert not index.exists()
    run = tmp_path / "run"
    held(run)
    assert main(["train", "similarity", "--dataset", "sample:mnist", "--model", "tiny", "--out", str(run)]) == 2
    assert "being written by another siamdiff process" in capsys.readouterr().err and not run.exists()
