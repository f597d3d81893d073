"""Input images: real files generated with Pillow (or crafted byte by byte where Pillow cannot)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile

from archiver.errors import ImageRejected
from archiver.images import LoadedImage, from_pil, load_image, save_image, sniff, to_pil

MAXP = 10_000_000


def gradient(w: int = 64, h: int = 48) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], axis=2).astype(np.uint8)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def rejected(data: bytes, max_pixels: int = MAXP) -> ImageRejected:
    with pytest.raises(ImageRejected) as ei:
        load_image(data, max_pixels=max_pixels)
    return ei.value


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def craft_png(width: int, height: int, depth: int, colour_type: int, raw: bytes) -> bytes:
    """A PNG written by hand: for what Pillow will not write (16-bit RGB, absurd sizes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw, 9))
            + png_chunk(b"IEND", b""))


def craft_rgb16_tiff(width: int, height: int) -> bytes:
    """An uncompressed 16-bit-per-sample RGB TIFF (Pillow reads it as 8-bit RGB: silent loss)."""
    pixels = (np.arange(width * height * 3, dtype=">u2") * 300).tobytes()
    entries = [  # tag, type, count, value
        (256, 3, 1, width), (257, 3, 1, height), (258, 3, 3, None), (259, 3, 1, 1), (262, 3, 1, 2),
        (273, 4, 1, None), (277, 3, 1, 3), (278, 3, 1, height), (279, 4, 1, len(pixels)), (284, 3, 1, 1),
    ]
    ifd_off = 8
    ifd_size = 2 + 12 * len(entries) + 4
    bps_off = ifd_off + ifd_size
    data_off = bps_off + 6
    out = b"MM\x00*" + struct.pack(">I", ifd_off) + struct.pack(">H", len(entries))
    for tag, typ, count, value in entries:
        if tag == 258:
            out += struct.pack(">HHII", tag, typ, count, bps_off)
        elif tag == 273:
            out += struct.pack(">HHII", tag, typ, count, data_off)
        elif typ == 3:
            out += struct.pack(">HHIHH", tag, typ, count, value, 0)
        else:
            out += struct.pack(">HHII", tag, typ, count, value)
    out += struct.pack(">I", 0) + struct.pack(">HHH", 16, 16, 16)
    return out + pixels


# --- sniffing -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,ctype", [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("TIFF", "image/tiff"),
                                       ("WEBP", "image/webp"), ("BMP", "image/bmp"), ("GIF", "image/gif")])
def test_sniff_real_files(fmt: str, ctype: str) -> None:
    assert sniff(encode(Image.fromarray(gradient()), fmt)) == ctype


def test_sniff_rejects() -> None:
    with pytest.raises(ImageRejected) as ei:
        sniff(b"")
    assert ei.value.code == "empty"
    for data in (b"hello, world\n", b"%PDF-1.7 ...", b"\x00\x00\x00\x1cftypheic" + bytes(20), b"BM"):
        with pytest.raises(ImageRejected) as ei:
            sniff(data)
        assert ei.value.code == "not_an_image"
    with pytest.raises(ImageRejected, match="text"):
        sniff(b"just some text")


# --- accepted formats and modes -------------------------------------------------------------------
@pytest.mark.parametrize("fmt,kw", [("PNG", {}), ("TIFF", {}), ("BMP", {}), ("WEBP", {"lossless": True}),
                                    ("TIFF", {"compression": "tiff_lzw"})])
def test_lossless_formats_are_exact(fmt: str, kw: dict) -> None:
    src = gradient(64, 48)
    data = encode(Image.fromarray(src), fmt, **kw)
    img = load_image(data, max_pixels=MAXP)
    assert isinstance(img, LoadedImage)
    assert img.mode == "RGB" and img.alpha is None
    assert (img.width, img.height) == (64, 48)
    assert img.rgb.dtype == np.uint8 and img.rgb.shape == (48, 64, 3)
    np.testing.assert_array_equal(img.rgb, src)
    assert img.original_bytes == len(data)
    import hashlib
    assert img.original_sha256 == hashlib.sha256(data).hexdigest()


def test_jpeg() -> None:
    src = gradient(64, 48)
    img = load_image(encode(Image.fromarray(src), "JPEG", quality=95), max_pixels=MAXP)
    assert img.content_type == "image/jpeg" and img.mode == "RGB"
    assert np.abs(img.rgb.astype(int) - src).mean() < 3


def test_single_frame_gif_is_palette() -> None:
    src = Image.fromarray(gradient(32, 16)).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    img = load_image(encode(src, "GIF"), max_pixels=MAXP)
    assert img.mode == "P" and img.content_type == "image/gif"
    np.testing.assert_array_equal(img.rgb, np.asarray(src.convert("RGB")))


def test_palette_png_with_transparency() -> None:
    p = Image.fromarray(gradient(16, 8)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    arr = np.asarray(p)
    idx = int(arr[0, 0])
    img = load_image(encode(p, "PNG", transparency=idx), max_pixels=MAXP)
    assert img.mode == "P" and img.alpha is not None
    np.testing.assert_array_equal(img.alpha == 0, arr == idx)
    assert (img.alpha[arr != idx] == 255).all()
    # without transparency: RGB, no alpha
    img2 = load_image(encode(p, "PNG"), max_pixels=MAXP)
    assert img2.mode == "P" and img2.alpha is None


def test_rgba_la_l_and_bilevel() -> None:
    rgb = gradient(20, 10)
    a = ((np.arange(200).reshape(10, 20) * 7) % 256).astype(np.uint8)
    rgba = Image.fromarray(np.dstack([rgb, a]))
    img = load_image(encode(rgba, "PNG"), max_pixels=MAXP)
    assert img.mode == "RGBA"
    np.testing.assert_array_equal(img.rgb, rgb)
    np.testing.assert_array_equal(img.alpha, a)

    g = rgb[:, :, 0]
    img = load_image(encode(Image.fromarray(g), "PNG"), max_pixels=MAXP)
    assert img.mode == "L" and img.alpha is None
    np.testing.assert_array_equal(img.rgb, np.repeat(g[:, :, None], 3, axis=2))

    la = Image.merge("LA", (Image.fromarray(g), Image.fromarray(a)))
    img = load_image(encode(la, "PNG"), max_pixels=MAXP)
    assert img.mode == "LA"
    np.testing.assert_array_equal(img.rgb[:, :, 1], g)
    np.testing.assert_array_equal(img.alpha, a)

    bw = Image.fromarray(g).convert("1")
    img = load_image(encode(bw, "PNG"), max_pixels=MAXP)
    assert img.mode == "1"
    assert set(np.unique(img.rgb)) <= {0, 255}
    np.testing.assert_array_equal(img.rgb[:, :, 0], np.asarray(bw.convert("L")))


def test_rgb_png_with_trns_colour_key_keeps_transparency() -> None:
    rgb = gradient(8, 4)
    key = tuple(int(v) for v in rgb[0, 0])
    img = load_image(encode(Image.fromarray(rgb), "PNG", transparency=key), max_pixels=MAXP)
    assert img.mode == "RGBA" and img.alpha is not None
    assert img.alpha[0, 0] == 0 and img.alpha[1, 1] == 255


def test_one_by_one() -> None:
    img = load_image(encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"), max_pixels=MAXP)
    assert (img.width, img.height) == (1, 1)
    assert img.rgb.tolist() == [[[1, 2, 3]]]


# --- orientation and metadata ---------------------------------------------------------------------
def _oriented_jpeg() -> tuple[bytes, bytes]:
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:, :30] = (255, 0, 0)  # stored left half red
    arr[:, 30:] = (0, 0, 255)  # stored right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    exif[0x010F] = "TestCam"
    raw = exif.tobytes()
    return encode(Image.fromarray(arr), "JPEG", quality=95, exif=raw), raw


def test_exif_orientation_applied_and_reset() -> None:
    data, raw = _oriented_jpeg()
    img = load_image(data, max_pixels=MAXP)
    assert (img.width, img.height) == (40, 60)  # oriented size
    assert img.rgb.shape == (60, 40, 3)
    top, bottom = img.rgb[:25].reshape(-1, 3).mean(0), img.rgb[35:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 50  # the stored left (red) is now on top
    assert bottom[2] > 200 and bottom[0] < 50
    assert img.exif is not None and img.exif.startswith(b"Exif\x00\x00")
    e = Image.Exif()
    e.load(img.exif)
    assert e[0x0112] == 1 and e[0x010F] == "TestCam"
    # reset in place: the same block, two bytes different
    assert len(img.exif) == len(raw)
    assert sum(x != y for x, y in zip(img.exif, raw, strict=True)) == 1


def test_exif_without_orientation_kept_verbatim() -> None:
    exif = Image.Exif()
    exif[0x010F] = "Cam"
    raw = exif.tobytes()
    for fmt in ("JPEG", "PNG", "WEBP"):
        img = load_image(encode(Image.fromarray(gradient(8, 8)), fmt, exif=raw), max_pixels=MAXP)
        assert img.exif == raw, fmt


def test_png_orientation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 8
    img = load_image(encode(Image.fromarray(gradient(30, 10)), "PNG", exif=exif.tobytes()), max_pixels=MAXP)
    assert (img.width, img.height) == (10, 30)
    np.testing.assert_array_equal(img.rgb, np.rot90(gradient(30, 10), k=1))


def test_tiff_orientation() -> None:
    from PIL import TiffImagePlugin
    ifd = TiffImagePlugin.ImageFileDirectory_v2()
    ifd[274] = 3  # rotated 180 degrees
    ifd[271] = "Maker"
    src = gradient(20, 10)
    img = load_image(encode(Image.fromarray(src), "TIFF", tiffinfo=ifd), max_pixels=MAXP)
    np.testing.assert_array_equal(img.rgb, src[::-1, ::-1])
    e = Image.Exif()
    e.load(img.exif)
    # Pillow's TIFF loader transposes by itself and drops the tag: it must not be applied twice
    assert e.get(274, 1) == 1 and e[271] == "Maker"


def test_icc_profile_preserved() -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for fmt, kw in (("PNG", {}), ("JPEG", {"quality": 90}), ("WEBP", {"lossless": True}), ("TIFF", {})):
        img = load_image(encode(Image.fromarray(gradient()), fmt, icc_profile=icc, **kw), max_pixels=MAXP)
        assert img.icc == icc, fmt
    assert load_image(encode(Image.fromarray(gradient()), "PNG"), max_pixels=MAXP).icc is None


def test_tiff_tags_become_exif() -> None:
    im = Image.fromarray(gradient(8, 8))
    info = {270: "a description", 315: "an artist"}
    from PIL import TiffImagePlugin
    ifd = TiffImagePlugin.ImageFileDirectory_v2()
    for k, v in info.items():
        ifd[k] = v
    img = load_image(encode(im, "TIFF", tiffinfo=ifd), max_pixels=MAXP)
    e = Image.Exif()
    e.load(img.exif)
    assert e[270] == "a description" and e[315] == "an artist"
    assert 273 not in e and 256 not in e  # structural tags dropped


# --- refusals -------------------------------------------------------------------------------------
def test_sixteen_bit_png_gray() -> None:
    im = Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    assert rejected(encode(im, "PNG")).code == "unsupported_depth"


def test_sixteen_bit_png_rgb_from_header() -> None:
    w, h = 4, 3
    rows = b"".join(b"\x00" + bytes(range(w * 6)) for _ in range(h))
    data = craft_png(w, h, 16, 2, rows)
    # Pillow itself would silently give 8-bit RGB:
    assert Image.open(io.BytesIO(data)).mode == "RGB"
    err = rejected(data)
    assert err.code == "unsupported_depth" and "16 bits" in str(err)


def test_eight_bit_crafted_png_is_fine() -> None:
    rows = b"".join(b"\x00" + bytes(range(12)) for _ in range(3))
    img = load_image(craft_png(4, 3, 8, 2, rows), max_pixels=MAXP)
    assert img.rgb[0, 0].tolist() == [0, 1, 2]


def test_sixteen_bit_tiff() -> None:
    assert rejected(craft_rgb16_tiff(4, 3)).code == "unsupported_depth"
    im = Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    assert rejected(encode(im, "TIFF")).code == "unsupported_depth"


def test_float_tiff() -> None:
    im = Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8))
    assert rejected(encode(im, "TIFF")).code == "unsupported_depth"


def test_cmyk_jpeg() -> None:
    err = rejected(encode(Image.new("CMYK", (16, 16), (10, 20, 30, 40)), "JPEG"))
    assert err.code == "unsupported_mode" and "CMYK" in str(err)


def test_cmyk_tiff() -> None:
    assert rejected(encode(Image.new("CMYK", (16, 16)), "TIFF")).code == "unsupported_mode"


def _frames(n: int = 3) -> list[Image.Image]:
    return [Image.new("RGB", (16, 16), (i * 80, 0, 0)) for i in range(n)]


def test_animated_gif_webp_apng() -> None:
    f = _frames()
    for fmt in ("GIF", "WEBP", "PNG"):
        data = encode(f[0], fmt, save_all=True, append_images=f[1:], duration=100)
        err = rejected(data)
        assert err.code == "animated", fmt
        assert "3 frames" in str(err)


def test_multipage_tiff() -> None:
    f = _frames(2)
    assert rejected(encode(f[0], "TIFF", save_all=True, append_images=f[1:])).code == "multi_image"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_truncated_files_are_corrupt() -> None:
    src = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    for fmt in ("JPEG", "PNG", "TIFF", "WEBP", "BMP", "GIF"):
        data = encode(src if fmt != "GIF" else src.convert("P"), fmt)
        for cut in (len(data) // 2, len(data) - 20, 40):
            err = rejected(data[:cut])
            assert err.code == "corrupt", (fmt, cut, str(err))


def test_corrupt_png_crc() -> None:
    data = bytearray(encode(Image.fromarray(gradient()), "PNG"))
    i = data.index(b"IDAT") + 20
    data[i] ^= 0xFF
    assert rejected(bytes(data)).code == "corrupt"


def test_truncation_flag_is_forced_off() -> None:
    data = encode(Image.fromarray(gradient()), "JPEG")
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        assert rejected(data[: len(data) // 2]).code == "corrupt"
        assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


def test_text_and_empty() -> None:
    assert rejected(b"this is not an image\n" * 10).code == "not_an_image"
    assert rejected(b"").code == "empty"


def test_bomb_huge_header() -> None:
    # 50000 x 50000 1-bit gray: 2.5 Gpx declared, a few hundred bytes on disk, never decoded
    row = b"\x00" + bytes(50000 // 8)
    data = craft_png(50000, 50000, 1, 0, row * 16)
    assert len(data) < 2000
    for max_pixels in (MAXP, 400_000_000):
        err = rejected(data, max_pixels=max_pixels)
        assert err.code == "decompression_bomb", str(err)


def test_bomb_over_our_limit_but_under_pillows() -> None:
    data = craft_png(3000, 3000, 1, 0, (b"\x00" + bytes(375)) * 4)
    err = rejected(data, max_pixels=1_000_000)
    assert err.code == "decompression_bomb" and "3000x3000" in str(err)


def test_side_over_container_limit() -> None:
    data = craft_png(70000, 1, 1, 0, b"\x00" + bytes(8750))
    assert rejected(data).code == "too_large"


def test_pillow_limit_raised_not_lowered() -> None:
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 1000
        img = load_image(encode(Image.fromarray(gradient(64, 48)), "PNG"), max_pixels=MAXP)  # 3072 px
        assert img.width == 64
        assert Image.MAX_IMAGE_PIXELS == MAXP
        load_image(encode(Image.fromarray(gradient(8, 8)), "PNG"), max_pixels=100)
        assert Image.MAX_IMAGE_PIXELS == MAXP
    finally:
        Image.MAX_IMAGE_PIXELS = old


def test_format_cannot_be_spoofed() -> None:
    """A GIF header followed by PNG data is parsed as GIF only (and refused), never as a PNG."""
    png = encode(Image.fromarray(gradient()), "PNG")
    assert rejected(b"GIF89a" + png[6:]).code in ("corrupt", "decompression_bomb")
    assert rejected(b"BM" + png[2:]).code == "corrupt"


# --- to_pil / from_pil / save_image ---------------------------------------------------------------
def test_to_pil_modes() -> None:
    rgb = gradient(10, 6)
    a = np.full((6, 10), 128, np.uint8)
    assert to_pil(rgb, None, "RGB").mode == "RGB"
    assert to_pil(rgb, a, "RGBA").mode == "RGBA"
    assert to_pil(rgb, None, "RGBA").mode == "RGB"
    assert to_pil(rgb, a, "P").mode == "RGBA"
    assert to_pil(rgb, None, "P").mode == "RGB"
    assert to_pil(rgb, None, "1").mode == "L"
    assert to_pil(rgb, a, "LA").mode == "LA"
    g = to_pil(np.array([[[1, 2, 2], [0, 0, 1], [255, 255, 254]]], np.uint8), None, "L")
    assert np.asarray(g).tolist() == [[2, 0, 255]]  # rounded channel mean


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "1", "P"])
def test_load_then_to_pil_round_trip(mode: str) -> None:
    rgb = gradient(12, 9)
    a = ((np.arange(108).reshape(9, 12) * 5) % 256).astype(np.uint8)
    src = {
        "RGB": Image.fromarray(rgb),
        "RGBA": Image.fromarray(np.dstack([rgb, a])),
        "L": Image.fromarray(rgb[:, :, 0]),
        "LA": Image.merge("LA", (Image.fromarray(rgb[:, :, 0]), Image.fromarray(a))),
        "1": Image.fromarray(rgb[:, :, 0]).convert("1"),
        "P": Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=32),
    }[mode]
    img = load_image(encode(src, "PNG"), max_pixels=MAXP)
    back = to_pil(img.rgb, img.alpha, img.mode)
    expected = {"1": "L", "P": "RGB"}.get(mode, mode)
    assert back.mode == expected
    ref = src.convert(expected)
    np.testing.assert_array_equal(np.asarray(back), np.asarray(ref))


def test_from_pil() -> None:
    im = Image.fromarray(gradient(16, 8))
    img = from_pil(im)
    assert img.mode == "RGB" and img.width == 16 and img.original_bytes == 0
    assert img.original_sha256 == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    with pytest.raises(ImageRejected) as ei:
        from_pil(Image.new("CMYK", (4, 4)))
    assert ei.value.code == "unsupported_mode"
    with pytest.raises(ImageRejected) as ei:
        from_pil(Image.new("I;16", (4, 4)))
    assert ei.value.code == "unsupported_depth"
    opened = Image.open(io.BytesIO(_oriented_jpeg()[0]))
    assert from_pil(opened).width == 40
    assert opened.size == (60, 40)  # the caller's image is untouched


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA"])
def test_save_image_keeps_metadata(fmt: str, mode: str) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "Cam"
    exif[0x0112] = 1
    rgb = gradient(24, 16)
    a = np.full((16, 24), 200, np.uint8)
    img = to_pil(rgb, a if mode in ("RGBA", "LA") else None, mode)
    data = save_image(img, fmt, icc, exif.tobytes())
    out = Image.open(io.BytesIO(data))
    out.load()
    assert out.format == fmt.upper()
    assert out.size == (24, 16)
    assert out.info.get("icc_profile") == icc
    assert out.getexif().get(0x010F) == "Cam"
    if fmt == "jpeg":
        assert out.mode in ("RGB", "L")
    elif mode in ("RGBA", "LA"):
        assert "A" in out.mode
    if fmt == "png":
        np.testing.assert_array_equal(np.asarray(out), np.asarray(img))


def test_save_image_without_metadata_and_bad_format() -> None:
    img = Image.fromarray(gradient(8, 8))
    out = Image.open(io.BytesIO(save_image(img, "webp", quality=100)))
    np.testing.assert_array_equal(np.asarray(out.convert("RGB")), gradient(8, 8))  # lossless at 100
    with pytest.raises(ValueError):
        save_image(img, "bmp")  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the damaged TIFF tags
def test_fuzz_only_image_rejected() -> None:
    """Damaged files of every format give a LoadedImage or ImageRejected, never another exception."""
    import random
    import time
    rng = random.Random(7)
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Cam"
    src = Image.fromarray(gradient(24, 16))
    seeds = [encode(src, "JPEG", exif=exif.tobytes()), encode(src, "PNG", exif=exif.tobytes()),
             encode(src, "TIFF", compression="tiff_lzw"), encode(src, "WEBP"), encode(src, "BMP"),
             encode(src.convert("P"), "GIF"), encode(src.convert("P"), "PNG", transparency=0)]
    t0 = time.monotonic()
    for i in range(3000):
        if time.monotonic() - t0 > 60:
            break
        data = bytearray(seeds[i % len(seeds)])
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(1, len(data) + 1)]
        try:
            img = load_image(bytes(data), max_pixels=1_000_000)
        except ImageRejected as exc:
            assert exc.code in {"corrupt", "decompression_bomb", "not_an_image", "unsupported_mode",
                                "unsupported_depth", "animated", "multi_image", "too_large", "empty"}, exc.code
        else:
            assert img.rgb.shape == (img.height, img.width, 3)
