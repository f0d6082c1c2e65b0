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
