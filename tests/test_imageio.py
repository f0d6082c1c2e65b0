"""Tests of siamdiff.data.imageio; every image is built on the fly in tmp_path."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile

from siamdiff.core.errors import ImageReadError, SiamdiffError
from siamdiff.data import imageio
from siamdiff.data.imageio import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    FolderImages,
    fit_to,
    list_images,
    read_folder,
    encode_png,
    read_image,
    read_image_bytes,
    write_png_atomic,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG with a valid signature and IHDR (8-bit gray) claiming width x height, and a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 16)) + _chunk(b"IEND", b"")
    path.write_bytes(data)
    return path


def _info(path: Path, attr: str) -> Any:
    """An attribute of the image at ``path`` (mode, n_frames), closing the file."""
    with Image.open(path) as img:
        return getattr(img, attr)


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- constants


def test_constants() -> None:
    assert MAX_PIXELS == 64_000_000
    assert isinstance(IMAGE_EXTENSIONS, frozenset)
    assert {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".pnm", ".pbm"} <= IMAGE_EXTENSIONS
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS)


# --------------------------------------------------------------------------- modes


def test_plain_rgb_and_gray_png(tmp_path: Path) -> None:
    rgb = _rgb(5, 7)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    out = read_image(tmp_path / "c.png")
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, rgb)

    gray = rgb[:, :, 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = read_image(str(tmp_path / "g.png"))
    assert out.shape == (5, 7, 1)
    np.testing.assert_array_equal(out[:, :, 0], gray)


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_orientation_applied(tmp_path: Path, orientation: int) -> None:
    # 32 high x 64 wide, black with a white 16x16 block in the top-left corner.
    pattern = np.zeros((32, 64, 3), dtype=np.uint8)
    pattern[:16, :16] = 255
    img = Image.fromarray(pattern)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)

    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (64, 32, 3)  # width and height swapped
    bright = out[:, :, 0] > 128
    if orientation == 6:  # rotate 90 deg clockwise: top-left goes to top-right
        assert bright[:16, 16:].mean() > 0.9
        assert bright[:16, :16].mean() < 0.1
    else:  # 8: rotate 90 deg counter-clockwise: top-left goes to bottom-left
        assert bright[48:, :16].mean() > 0.9
        assert bright[:16, :16].mean() < 0.1


def test_palette_png_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    img.save(tmp_path / "p.png", transparency=1)
    assert _info(tmp_path / "p.png", "mode") == "P"

    out = read_image(tmp_path / "p.png")
    assert out.shape == (1, 2, 3)
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1].tolist() == [255, 255, 255]  # transparent blue -> white


def test_palette_without_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([10, 20, 30, 40, 50, 60] + [0] * (256 * 3 - 6))
    img.putpixel((1, 0), 1)
    img.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    assert out.tolist() == [[[10, 20, 30], [40, 50, 60]]]


def test_rgba_composited_over_white(tmp_path: Path) -> None:
    rgba = np.array(
        [[[10, 20, 30, 255], [0, 0, 0, 0], [0, 0, 0, 128]]],
        dtype=np.uint8,
    )
    Image.fromarray(rgba).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.shape == (1, 3, 3)
    assert out[0, 0].tolist() == [10, 20, 30]  # opaque: unchanged
    assert out[0, 1].tolist() == [255, 255, 255]  # fully transparent: white
    assert out[0, 2].tolist() == [127, 127, 127]  # half black over white


def test_la_composited_over_white(tmp_path: Path) -> None:
    la = np.array([[[40, 255], [40, 0]]], dtype=np.uint8)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    assert _info(tmp_path / "la.png", "mode") == "LA"
    out = read_image(tmp_path / "la.png")
    assert out.shape == (1, 2, 1)
    assert out[0, :, 0].tolist() == [40, 255]


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_cmyk_to_rgb(tmp_path: Path, suffix: str) -> None:
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / f"c{suffix}")
    assert _info(tmp_path / f"c{suffix}", "mode") == "CMYK"
    out = read_image(tmp_path / f"c{suffix}")
    assert out.shape == (16, 16, 3)
    r, g, b = (int(v) for v in out[8, 8])
    assert r > 240 and g < 15 and b < 15  # pure red


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_sixteen_bit_gray_scaled_not_clipped(tmp_path: Path, suffix: str) -> None:
    values = np.array([[0, 255, 256, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / f"g16{suffix}")
    assert _info(tmp_path / f"g16{suffix}", "mode").startswith("I")
    out = read_image(tmp_path / f"g16{suffix}")
    assert out.dtype == np.uint8 and out.shape == (1, 5, 1)
    assert out[0, :, 0].tolist() == [0, 0, 1, 128, 255]


def test_sixteen_bit_pgm(tmp_path: Path) -> None:
    (tmp_path / "g.pgm").write_bytes(b"P5\n2 1\n65535\n" + np.array([65535, 32768], dtype=">u2").tobytes())
    out = read_image(tmp_path / "g.pgm")
    assert out[0, :, 0].tolist() == [255, 128]


def test_float_mode(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(tmp_path / "unit.tif")
    Image.fromarray(np.array([[0.0, 100.0, 300.0, -5.0]], dtype=np.float32)).save(tmp_path / "wide.tif")
    assert _info(tmp_path / "unit.tif", "mode") == "F"
    assert read_image(tmp_path / "unit.tif")[0, :, 0].tolist() == [0, 128, 255]
    assert read_image(tmp_path / "wide.tif")[0, :, 0].tolist() == [0, 100, 255, 0]


def test_one_bit_mode(tmp_path: Path) -> None:
    img = Image.new("1", (3, 2), 0)
    img.putpixel((1, 0), 1)
    img.save(tmp_path / "b.png")
    assert _info(tmp_path / "b.png", "mode") == "1"
    out = read_image(tmp_path / "b.png")
    assert out.shape == (2, 3, 1)
    assert out[:, :, 0].tolist() == [[0, 255, 0], [0, 0, 0]]


def test_multi_frame_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (4, 4), c) for c in ((200, 0, 0), (0, 0, 200))]
    frames[0].save(tmp_path / "m.gif", save_all=True, append_images=frames[1:])
    assert _info(tmp_path / "m.gif", "n_frames") == 2
    out = read_image(tmp_path / "m.gif")
    assert out.shape == (4, 4, 3)
    assert out[0, 0].tolist() == [200, 0, 0]


def test_multi_frame_tiff_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("L", (3, 3), v) for v in (11, 99)]
    frames[0].save(tmp_path / "m.tif", save_all=True, append_images=frames[1:])
    assert _info(tmp_path / "m.tif", "n_frames") == 2
    out = read_image(tmp_path / "m.tif")
    assert out.shape == (3, 3, 1) and int(out[0, 0, 0]) == 11


def test_channel_conversions(tmp_path: Path) -> None:
    Image.new("L", (3, 2), 77).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png", channels=3)
    assert out.shape == (2, 3, 3) and (out == 77).all()

    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[...] = (200, 100, 50)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    out = read_image(tmp_path / "c.png", channels=1)
    assert out.shape == (2, 3, 1)
    luma = (200 * 299 + 100 * 587 + 50 * 114) / 1000  # ITU-R 601-2, PIL's 'L' formula
    assert abs(int(out[0, 0, 0]) - luma) <= 1

    with pytest.raises(ValueError):
        read_image(tmp_path / "c.png", channels=2)


def test_rgba_to_gray_uses_white_background(tmp_path: Path) -> None:
    Image.new("RGBA", (2, 2), (0, 0, 0, 0)).save(tmp_path / "t.png")
    assert (read_image(tmp_path / "t.png", channels=1) == 255).all()


# --------------------------------------------------------------------------- failures


def _message(excinfo: pytest.ExceptionInfo[ImageReadError], name: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and name in msg
    return msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError) as ei:
        read_image(tmp_path / "nope.png")
    assert "no such file" in _message(ei, "nope.png")


def test_directory_given(tmp_path: Path) -> None:
    (tmp_path / "d.png").mkdir()
    with pytest.raises(ImageReadError) as ei:
        read_image(tmp_path / "d.png")
    assert "directory" in _message(ei, "d.png")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(ImageReadError) as ei:
        read_image(tmp_path / "e.png")
    assert "file is empty" in _message(ei, "e.png")


def test_text_file_named_png(tmp_path: Path) -> None:
    (tmp_path / "t.png").write_text("hello, I am not a picture\n")
    with pytest.raises(ImageReadError) as ei:
        read_image(tmp_path / "t.png")
    assert "not an image file" in _message(ei, "t.png")


def test_truncated_png(tmp_path: Path) -> None:
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "half.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as ei:
        read_image(tmp_path / "half.png")
    assert "truncated or corrupt" in _message(ei, "half.png")


def test_truncated_refused_even_if_pil_told_to_allow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "half.png").write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageReadError, match="truncated or corrupt"):
        read_image(tmp_path / "half.png")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


def test_corrupt_jpeg_body(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(buf, format="JPEG")
    data = buf.getvalue()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageReadError, match="truncated or corrupt"):
        read_image(tmp_path / "cut.jpg")


def test_zero_width_png(tmp_path: Path) -> None:
    path = _png_header_only(tmp_path / "zero.png", width=0, height=10)
    with pytest.raises(ImageReadError) as ei:
        read_image(path)
    _message(ei, "zero.png")  # PIL refuses to identify it, so the reason is "not an image file"


def test_zero_size_caught_by_own_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # PIL itself never opens a 0-pixel file; simulate one to exercise the check.
    Image.new("L", (4, 4)).save(tmp_path / "z.png")

    class _ZeroSize:
        size = (0, 4)

        def __enter__(self) -> _ZeroSize:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(imageio.Image, "open", lambda *_a, **_k: _ZeroSize())
    with pytest.raises(ImageReadError, match="zero width or height"):
        read_image(tmp_path / "z.png")


def test_decompression_bomb_own_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("L", (20, 20)).save(tmp_path / "b.png")
    monkeypatch.setattr(imageio, "MAX_PIXELS", 100)
    with pytest.raises(ImageReadError) as ei:
        read_image(tmp_path / "b.png")
    msg = _message(ei, "b.png")
    assert "too large (400 pixels > 100)" in msg and "decompression bomb" in msg


def test_decompression_bomb_header(tmp_path: Path) -> None:
    # 9000 x 9000 = 81 M pixels: over our limit, under PIL's; only the header is read.
    path = _png_header_only(tmp_path / "big.png", 9000, 9000)
    with pytest.raises(ImageReadError, match=r"too large \(81000000 pixels > 64000000\)"):
        read_image(path)


def test_decompression_bomb_pil_error(tmp_path: Path) -> None:
    # 100000^2 pixels: PIL itself raises DecompressionBombError in Image.open.
    path = _png_header_only(tmp_path / "huge.png", 100_000, 100_000)
    with pytest.raises(ImageReadError, match="decompression bomb") as ei:
        read_image(path)
    assert "10000000000" in str(ei.value)


def test_pil_bomb_warning_becomes_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Our own limit raised above PIL's warning threshold: the warning must become an ImageReadError.
    monkeypatch.setattr(imageio, "MAX_PIXELS", 10**12)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    Image.new("L", (10, 10)).save(tmp_path / "w.png")
    with pytest.raises(ImageReadError, match="decompression bomb"):
        read_image(tmp_path / "w.png")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file permissions")
def test_unreadable_permission(tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    Image.new("L", (2, 2)).save(path)
    path.chmod(0)
    try:
        with pytest.raises(ImageReadError, match="permission denied"):
            read_image(path)
    finally:
        path.chmod(0o644)


def test_permission_error_while_opening(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Runs as root too: simulate the OS refusing the open itself.
    Image.new("L", (2, 2)).save(tmp_path / "p.png")

    def refuse(*_a: object, **_k: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(imageio.Image, "open", refuse)
    with pytest.raises(ImageReadError, match="permission denied"):
        read_image(tmp_path / "p.png")


# --------------------------------------------------------------------------- list_images


def test_list_images_filters_and_sorts(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for rel in ["b.PNG", "a.jpg", "sub/c.tiff", ".secret.png", ".hidden/d.png", "notes.txt", "sub/e.JPEG"]:
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "dir.png").mkdir()  # a directory with an image suffix is not a file

    found = list_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.jpg", "b.PNG", "sub/c.tiff", "sub/e.JPEG"]
    flat = list_images(tmp_path, recursive=False)
    assert [p.name for p in flat] == ["a.jpg", "b.PNG"]


def test_list_images_bad_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="no such folder"):
        list_images(tmp_path / "missing")
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(ImageReadError, match="not a directory"):
        list_images(tmp_path / "f.png")


# --------------------------------------------------------------------------- fit_to


def test_fit_to_resize_and_channels() -> None:
    rgb = _rgb(40, 30)
    out = fit_to(rgb, 1, (16, 24))
    assert out.shape == (16, 24, 1) and out.dtype == np.uint8

    gray = np.full((10, 10, 1), 9, dtype=np.uint8)
    out = fit_to(gray, 3, (5, 20))  # aspect ratio not preserved
    assert out.shape == (5, 20, 3) and (out == 9).all()

    same = fit_to(rgb, 3, (40, 30))
    np.testing.assert_array_equal(same, rgb)


def test_fit_to_downscale_antialiases() -> None:
    # A 1-pixel checkerboard averages to mid-gray when downscaled with antialiasing.
    board = ((np.indices((64, 64)).sum(axis=0) % 2) * 255).astype(np.uint8)[:, :, None]
    out = fit_to(board, 1, (8, 8))
    assert np.abs(out.astype(int) - 127.5).max() < 10


def test_fit_to_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        fit_to(np.zeros((4, 4, 3), dtype=np.float32), 3, (2, 2))
    with pytest.raises(ValueError):
        fit_to(np.zeros((4, 4, 3), dtype=np.uint8), 3, (0, 2))
    with pytest.raises(ValueError):
        fit_to(np.zeros((4, 4, 2), dtype=np.uint8), 3, (2, 2))


# --------------------------------------------------------------------------- read_folder


def test_read_folder_skips_bad_files(tmp_path: Path) -> None:
    Image.fromarray(_rgb(12, 20)).save(tmp_path / "a.png")
    Image.new("L", (7, 7), 200).save(tmp_path / "b.jpg")
    (tmp_path / "c.png").write_bytes(b"")
    (tmp_path / "d.png").write_text("not an image")
    (tmp_path / "readme.txt").write_text("ignored")

    result = read_folder(tmp_path, channels=3, size=(8, 10))
    assert isinstance(result, FolderImages)
    assert result.images.shape == (2, 3, 8, 10) and result.images.dtype == np.uint8
    assert [p.name for p in result.paths] == ["a.png", "b.jpg"]
    assert result.labels is None
    assert [(p.name, r) for p, r in result.skipped] == [("c.png", "file is empty"), ("d.png", "not an image file")]
    # channels-first and matches fit_to on the file read alone
    expected = fit_to(read_image(tmp_path / "a.png"), 3, (8, 10)).transpose(2, 0, 1)
    np.testing.assert_array_equal(result.images[0], expected)
    assert (np.abs(result.images[1].astype(int) - 200) <= 2).all()


def test_read_folder_class_from_parent(tmp_path: Path) -> None:
    for cls, value in [("cats", 10), ("dogs", 20)]:
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("L", (5, 5), value + i).save(tmp_path / cls / f"{i}.png")
    result = read_folder(tmp_path, channels=1, size=(4, 4), class_from_parent=True)
    assert result.labels == ["cats", "cats", "dogs", "dogs"]
    assert result.images.shape == (4, 1, 4, 4)
    assert [int(result.images[i, 0, 0, 0]) for i in range(4)] == [10, 11, 20, 21]
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("L", (5, 5), 0).save(flat / "a.png")
    with pytest.raises(ImageReadError, match="no images inside class folders"):
        read_folder(flat, channels=1, size=(4, 4), class_from_parent=True)


def test_read_folder_empty_and_all_bad(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError, match="no images found"):
        read_folder(tmp_path / "empty", channels=1, size=(4, 4))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"")
    (tmp_path / "bad" / "b.png").write_text("nope")
    with pytest.raises(ImageReadError, match="all 2 files unreadable"):
        read_folder(tmp_path / "bad", channels=1, size=(4, 4))
    with pytest.raises(ImageReadError):
        read_folder(tmp_path / "missing", channels=1, size=(4, 4))


# --------------------------------------------------------------------------- write_png_atomic


@pytest.mark.parametrize("shape", [(6, 5), (6, 5, 1), (6, 5, 3), (6, 5, 4)])
def test_write_png_atomic_round_trip(tmp_path: Path, shape: tuple[int, ...]) -> None:
    array = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    dest = tmp_path / "out.png"
    dest.write_bytes(b"old content")  # replaced, not appended to
    write_png_atomic(array, dest)
    with Image.open(dest) as img:
        assert img.format == "PNG"
        back = np.asarray(img)
    np.testing.assert_array_equal(back.reshape(array.shape), array)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # no temp file left


def test_write_png_atomic_new_file_mode(tmp_path: Path) -> None:
    dest = tmp_path / "new.png"
    write_png_atomic(np.zeros((2, 2), dtype=np.uint8), dest)
    assert dest.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


def test_write_png_atomic_errors(tmp_path: Path) -> None:
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    with pytest.raises(SiamdiffError, match="does not exist"):
        write_png_atomic(image, tmp_path / "missing" / "x.png")
    (tmp_path / "d.png").mkdir()
    with pytest.raises(SiamdiffError, match="directory"):
        write_png_atomic(image, tmp_path / "d.png")
    with pytest.raises(ValueError):
        write_png_atomic(image.astype(np.float32), tmp_path / "f.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.png"]


def test_write_png_atomic_unwritable_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imageio.os, "access", lambda *_a, **_k: False)
    with pytest.raises(SiamdiffError, match="not writable"):
        write_png_atomic(np.zeros((2, 2), dtype=np.uint8), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_write_png_atomic_cleans_up_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(imageio.os, "replace", failing_replace)
    with pytest.raises(SiamdiffError, match="no space left"):
        write_png_atomic(np.zeros((2, 2), dtype=np.uint8), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []



def test_uploaded_bytes_decode_as_files_do(tmp_path: Path) -> None:
    rgba = np.random.default_rng(0).integers(0, 256, (9, 7, 4), dtype=np.uint8)
    for name, array in (("c.png", rgba[:, :, :3]), ("a.png", rgba), ("g.png", rgba[:, :, 0])):
        Image.fromarray(array).save(tmp_path / name)
        data = (tmp_path / name).read_bytes()
        for channels in (None, 1, 3):
            assert np.array_equal(read_image_bytes(data, name, channels), read_image(tmp_path / name, channels))
        assert np.array_equal(read_image_bytes(data, name, keep_alpha=True),
                              read_image(tmp_path / name, keep_alpha=True))


def test_uploaded_bytes_refusals(tmp_path: Path) -> None:
    png = encode_png(np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8))
    with pytest.raises(ImageReadError, match=r"^cannot read 'up\.png': image is too large \(63 pixels > 62\)"):
        read_image_bytes(png, "up.png", max_pixels=62)
    for bad, words in ((b"", "file is empty"), (png[: len(png) // 2], "truncated or corrupt"),
                       (b"hello", "not an image file")):
        with pytest.raises(ImageReadError, match=words):
            read_image_bytes(bad, "up.png")
    # PIL identifies an EPS file (decoding it would run Ghostscript); an upload is not decoded as one
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
    with Image.open(io.BytesIO(eps)) as img:
        assert img.format == "EPS"
    with pytest.raises(ImageReadError, match="not an image file"):
        read_image_bytes(eps, "up.eps")


def test_encode_png_round_trips() -> None:
    rng = np.random.default_rng(1)
    for shape in ((5, 6), (5, 6, 1), (5, 6, 2), (5, 6, 3), (5, 6, 4)):
        array = rng.integers(0, 256, shape, dtype=np.uint8)
        back = np.asarray(Image.open(io.BytesIO(encode_png(array))))
        assert np.array_equal(back, array.reshape(back.shape))
    with pytest.raises(ValueError):
        encode_png(np.zeros((0, 4), np.uint8))
