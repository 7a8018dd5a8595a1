"""Real-world inputs: every odd but valid image embeds as a person sees it; every bad one is
reported with a reason and the run goes on. Files are made from the real photos in samples/."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, pillow_input, sample
from PIL import Image

import efx
from efx.config import DEFAULT_MAX_PIXELS, DecodeOptions
from efx.decode.image import decode_image
from efx.decode.pipeline import failure_reason

SIZE = 48


def decode_file(path: str, **options) -> np.ndarray:
    return decode_image(tf.io.read_file(path), DecodeOptions(SIZE, **options)).numpy()


def cat() -> Image.Image:
    return sample("chelsea.png")  # 451x300: not square, so a wrong turn cannot hide


def coffee() -> Image.Image:
    return sample("coffee.jpg")


def exif_jpeg(orientation: int, big_endian: bool = False) -> bytes:
    if big_endian:  # Pillow writes little-endian EXIF; cameras from some makers write this
        ifd = struct.pack(">HHHIHH", 1, 0x0112, 3, 1, orientation, 0) + b"\0\0\0\0"
        exif = b"Exif\0\0MM\0\x2a" + struct.pack(">I", 8) + ifd
    else:
        tags = Image.Exif()
        tags[0x0112] = orientation
        tags[0x010F] = "efx test camera"  # the orientation is not always the first tag
        exif = tags.tobytes()
    buffer = io.BytesIO()
    cat().save(buffer, "JPEG", quality=90, exif=exif)
    return buffer.getvalue()


def bitfields_bmp(image: Image.Image, bpp: int, masks: tuple[int, int, int]) -> bytes:
    """A BI_BITFIELDS BMP (Pillow writes none): TensorFlow ignores the masks."""
    pixels = np.asarray(image.convert("RGB")).astype(np.uint32)
    height, width, _ = pixels.shape
    value = np.zeros((height, width), np.uint32)
    for channel, mask in enumerate(masks):
        shift = (mask & -mask).bit_length() - 1
        peak = mask >> shift
        value |= ((pixels[..., channel] * peak + 127) // 255) << shift
    stride = (bpp * width + 31) // 32 * 4
    rows = value.astype("<u2" if bpp == 16 else "<u4")[::-1]  # bottom-up
    raw = b"".join(row.tobytes().ljust(stride, b"\0") for row in rows)
    header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bpp, 3, len(raw), 2835, 2835, 0, 0)
    header += struct.pack("<III", *masks)
    offset = 14 + len(header)
    return b"BM" + struct.pack("<IHHI", offset + len(raw), 0, 0, offset) + header + raw


def four_bit_bmp(image: Image.Image) -> bytes:
    """A 16-colour BMP, two pixels per byte (Pillow writes none; TensorFlow refuses them)."""
    quantized = image.convert("RGB").quantize(16)
    indices = np.asarray(quantized, np.uint8)
    height, width = indices.shape
    stride = (4 * width + 31) // 32 * 4
    padded = np.zeros((height, stride * 2), np.uint8)
    padded[:, :width] = indices
    packed = (padded[:, 0::2] << 4) | padded[:, 1::2]
    raw = packed[::-1].tobytes()  # bottom-up
    colors = np.asarray(quantized.getpalette()[:48], np.uint8).reshape(16, 3)
    table = np.concatenate([colors[:, ::-1], np.zeros((16, 1), np.uint8)], axis=1).tobytes()
    header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 4, 0, len(raw), 2835, 2835, 16, 0)
    offset = 14 + len(header) + len(table)
    return b"BM" + struct.pack("<IHHI", offset + len(raw), 0, 0, offset) + header + table + raw


def saved(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def animation(fmt: str, mode: str = "RGB", **params) -> bytes:
    frames = [cat().convert(mode).resize((120, 80)), coffee().convert(mode).resize((120, 80))]
    return saved(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, **params)


def rgba(image: Image.Image) -> Image.Image:
    with_alpha = image.convert("RGBA")
    with_alpha.putalpha(180)
    return with_alpha


def palette_with_transparency() -> Image.Image:
    image = coffee().convert("P", palette=Image.Palette.ADAPTIVE)
    image.info["transparency"] = 0
    return image


def exif_bytes(orientation: int) -> bytes:
    tags = Image.Exif()
    tags[0x0112] = orientation
    return tags.tobytes()


def sideways(orientation: int) -> Image.Image:
    """The cat stored the way a camera with this EXIF orientation stores it."""
    stored = {
        3: Image.Transpose.ROTATE_180,
        6: Image.Transpose.ROTATE_90,
        8: Image.Transpose.ROTATE_270,
    }
    return cat().transpose(stored[orientation])


def jpeg_exif_after_large_segments(orientation: int) -> bytes:
    """A JPEG whose EXIF APP1 follows 72 KB of XMP (APP1) and ICC (APP2) segments, as photo
    editors write them: the EXIF block starts past the first 64 KiB."""

    def segment(marker: int, payload: bytes) -> bytes:
        return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload

    plain = saved(sideways(orientation), "JPEG", quality=90)
    app0 = struct.unpack(">H", plain[4:6])[0] + 2  # Pillow's JFIF segment stays first
    xmp = b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta>" + b" " * 60000 + b"</x:xmpmeta>"
    icc = b"ICC_PROFILE\0\x01\x01" + bytes(12000)
    extra = segment(0xE1, xmp) + segment(0xE2, icc) + segment(0xE1, exif_bytes(orientation))
    data = plain[: 2 + app0] + extra + plain[2 + app0 :]
    assert data.index(b"Exif\0\0") > 65536
    return data


def xmp_only(orientation: int, fmt: str) -> bytes:
    """A photo stored sideways whose orientation is given only in XMP (no EXIF tag), as some
    editors and phones write it: an attribute in a JPEG's APP1 XMP segment or a WebP's XMP
    chunk, an element in a PNG's iTXt chunk. Pillow's getexif() reads it from there."""
    from PIL import PngImagePlugin

    attribute = f'<x:xmpmeta><rdf:Description tiff:Orientation="{orientation}"/></x:xmpmeta>'
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_itxt(
            "XML:com.adobe.xmp", f"<x:xmpmeta><tiff:Orientation>{orientation}</tiff:Orientation>"
        )
        return saved(sideways(orientation), "PNG", pnginfo=info)
    if fmt == "WEBP":
        return saved(sideways(orientation), "WEBP", lossless=True, xmp=attribute.encode())
    plain = saved(sideways(orientation), "JPEG", quality=90)
    app0 = struct.unpack(">H", plain[4:6])[0] + 2
    xmp = b"http://ns.adobe.com/xap/1.0/\0" + attribute.encode()
    segment = b"\xff\xe1" + struct.pack(">H", len(xmp) + 2) + xmp
    return plain[: 2 + app0] + segment + plain[2 + app0 :]


def gif_with_offset_frame() -> bytes:
    """A GIF whose only frame (120x80) sits at +40+30 on a 200x140 logical screen: the rest of
    the screen is background, as GIF optimisers write."""
    data = bytearray(saved(cat().resize((120, 80)).quantize(64), "GIF"))
    data[6:10] = struct.pack("<HH", 200, 140)
    at = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    while data[at] == 0x21:  # extension blocks
        at += 2
        while data[at]:
            at += data[at] + 1
        at += 1
    data[at + 1 : at + 5] = struct.pack("<HH", 40, 30)
    return bytes(data)


def logo(kind: str) -> bytes:
    """A palette logo on a transparent background whose palette colour (index 0) is white."""
    image = Image.new("P", (160, 96), 0)
    image.putpalette([255, 255, 255, 220, 20, 20, 20, 40, 220] + [0] * 759)
    image.paste(1, (16, 12, 70, 60))
    image.paste(2, (90, 40, 150, 90))
    return saved(image, kind, transparency=0)


def rle_bmp(bits: int) -> bytes:
    """A BI_RLE8 or BI_RLE4 BMP of the cat in 16 colours, runs and end-of-line codes as Paint
    writes them (Pillow writes none)."""
    quantized = cat().quantize(16)
    indices = np.asarray(quantized, np.uint8)
    height, width = indices.shape
    encoded = bytearray()
    for row in indices[::-1]:  # bottom-up
        x = 0
        while x < width:
            n = 1
            while x + n < width and n < 255 and row[x + n] == row[x]:
                n += 1
            encoded += bytes([n, row[x] if bits == 8 else row[x] * 17])  # RLE4: both nibbles
            x += n
        encoded += b"\0\0"  # end of line
    encoded += b"\0\1"  # end of bitmap
    colors = np.asarray(quantized.getpalette()[:48], np.uint8).reshape(16, 3)
    table = np.concatenate([colors[:, ::-1], np.zeros((16, 1), np.uint8)], axis=1).tobytes()
    compression = 1 if bits == 8 else 2
    header = struct.pack(
        "<IiiHHIIiiII", 40, width, height, 1, bits, compression, len(encoded), 2835, 2835, 16, 0
    )
    offset = 14 + len(header) + len(table)
    return (
        b"BM" + struct.pack("<IHHI", offset + len(encoded), 0, 0, offset) + header + table + encoded
    )


# name -> bytes, for inputs that are valid: efx must see what Pillow (turning by EXIF) sees.
ODD_BUT_VALID: dict[str, Callable[[], bytes]] = {
    **{f"exif-{o}.jpg": (lambda o=o: exif_jpeg(o)) for o in range(1, 9)},
    "exif-6-big-endian.jpg": lambda: exif_jpeg(6, big_endian=True),
    "cmyk.jpg": lambda: saved(coffee().convert("CMYK"), "JPEG", quality=90),
    "progressive.jpg": lambda: saved(coffee(), "JPEG", progressive=True, quality=90),
    "gray.jpg": lambda: saved(coffee().convert("L"), "JPEG"),
    "gray-alpha.png": lambda: saved(cat().convert("LA"), "PNG"),
    "palette-transparency.png": lambda: saved(palette_with_transparency(), "PNG"),
    "one-bit.png": lambda: saved(cat().convert("1"), "PNG"),
    "sixteen-bit.png": lambda: saved(
        Image.fromarray((np.asarray(cat().convert("L"), np.uint16) * 257 + 3).astype(np.uint16)),
        "PNG",
    ),
    "animated.png": lambda: animation("PNG"),
    "animated.gif": lambda: animation("GIF"),
    "animated.webp": lambda: animation("WEBP"),
    "animated-rgba.webp": lambda: animation("WEBP", mode="RGBA"),
    "rgba.webp": lambda: saved(rgba(cat()), "WEBP", quality=90),
    "lossless.webp": lambda: saved(cat(), "WEBP", lossless=True),
    "palette.bmp": lambda: saved(coffee().convert("P", palette=Image.Palette.ADAPTIVE), "BMP"),
    "four-bit.bmp": lambda: four_bit_bmp(coffee()),
    "one-bit.bmp": lambda: saved(cat().convert("1"), "BMP"),
    "gray.bmp": lambda: saved(cat().convert("L"), "BMP"),
    "rgb.bmp": lambda: saved(cat(), "BMP"),
    "bitfields-565.bmp": lambda: bitfields_bmp(cat(), 16, (0xF800, 0x07E0, 0x001F)),
    "bitfields-32.bmp": lambda: bitfields_bmp(coffee(), 32, (0xFF0000, 0x00FF00, 0x0000FF)),
    "png-named.jpg": lambda: saved(cat(), "PNG"),
    # Orientation wherever a format carries it (Pillow's exif_transpose reads all three).
    **{
        f"exif-{o}.{fmt.lower()}": (
            lambda o=o, fmt=fmt: saved(sideways(o), fmt, exif=exif_bytes(o))
        )
        for o in (3, 6, 8)
        for fmt in ("PNG", "WEBP")
    },
    "exif-6-after-72kb-of-xmp.jpg": lambda: jpeg_exif_after_large_segments(6),
    # Orientation given only in XMP (tiff:Orientation), as Pillow's getexif() reads it.
    **{
        f"xmp-{o}.{fmt.lower()}": (lambda o=o, fmt=fmt: xmp_only(o, fmt))
        for o in (6, 8)
        for fmt in ("JPEG", "PNG", "WEBP")
    },
    # Composition: a GIF's transparent pixels keep their palette colour; a frame smaller than
    # the screen is placed on it.
    "transparent-logo.gif": lambda: logo("GIF"),
    "offset-frame.gif": gif_with_offset_frame,
    "rle8.bmp": lambda: rle_bmp(8),
    "rle4.bmp": lambda: rle_bmp(4),
    "jpeg-named.png": lambda: saved(coffee(), "JPEG", quality=90),
}


@pytest.mark.parametrize("name", sorted(ODD_BUT_VALID))
def test_odd_but_valid_inputs_decode_as_pillow_shows_them(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(ODD_BUT_VALID[name]())
    # Decoders agree exactly (libjpeg accurate DCT, zlib, libwebp); the resize is the same
    # triangle filter, ~3e-7 apart. 565 BMPs: Pillow rounds 5-bit values to 8 bits, efx keeps
    # the exact fraction, so the two may differ by up to one 8-bit level.
    tolerance = 1.5 / 255 if "565" in name else 2e-5
    np.testing.assert_allclose(
        decode_file(str(path)), pillow_input(str(path), SIZE), rtol=0, atol=tolerance
    )


def test_a_picture_embeds_the_same_whichever_container_holds_it(tmp_path):
    # The same palette logo with a transparent background, as a GIF and as a PNG with tRNS:
    # both give the palette colour where the pixels are transparent (Pillow's convert("RGB")).
    (tmp_path / "logo.gif").write_bytes(logo("GIF"))
    (tmp_path / "logo.png").write_bytes(logo("PNG"))
    gif, png = decode_file(str(tmp_path / "logo.gif")), decode_file(str(tmp_path / "logo.png"))
    np.testing.assert_allclose(gif, png, atol=1e-6)
    assert gif[0, 0].tolist() == [1.0, 1.0, 1.0]  # white background, not black


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_no_exif_leaves_every_format_as_stored(tmp_path, fmt):
    path = tmp_path / f"sideways.{fmt.lower()}"
    path.write_bytes(saved(sideways(6), fmt, exif=exif_bytes(6)))
    stored = tmp_path / f"stored.{fmt.lower()}"
    stored.write_bytes(saved(sideways(6), fmt))
    np.testing.assert_allclose(
        decode_file(str(path), exif=False), decode_file(str(stored)), atol=2e-5
    )


@pytest.mark.parametrize("resize", ["squash", "crop", "pad"])
@pytest.mark.parametrize("width, height", [(2000, 1), (1, 2000), (1, 1), (3000, 2), (5, 20000)])
def test_every_aspect_ratio_embeds_in_every_resize_mode(tmp_path, resize, width, height):
    ramp = np.linspace(64, 255, width * height).astype(np.uint8).reshape(height, width)
    path = tmp_path / "strip.png"
    Image.fromarray(np.stack([ramp, ramp[::-1], ramp // 2], axis=-1)).save(path)
    image = decode_file(str(path), resize=resize)
    assert image.shape == (SIZE, SIZE, 3) and image.max() > 0.1
    if resize == "pad":  # fitted as Pillow would: the long side fills, the short one keeps >= 1
        scale = SIZE / max(width, height)
        fitted = (max(1, int(width * scale)), max(1, int(height * scale)))
        expected = np.zeros((SIZE, SIZE, 3), np.float32)
        rgb = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255
        inner = np.stack(
            [
                np.asarray(Image.fromarray(rgb[:, :, c], "F").resize(fitted, Image.BILINEAR))
                for c in range(3)
            ],
            axis=-1,
        )
        top, left = (SIZE - fitted[1]) // 2, (SIZE - fitted[0]) // 2
        expected[top : top + fitted[1], left : left + fitted[0]] = inner
        np.testing.assert_allclose(image, expected, atol=2e-5)


def test_sideways_phone_photo_with_orientation_tag_matches_the_upright_photo(tmp_path):
    upright = cat().crop((0, 0, 448, 288))  # whole JPEG blocks, so turning is lossless
    upright.save(tmp_path / "upright.jpg", quality=95)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # the sensor's landscape, sideways
    tags = Image.Exif()
    tags[0x0112] = 6  # "turn 90 degrees clockwise to view"
    stored.save(tmp_path / "sideways.jpg", quality=95, exif=tags.tobytes())

    upright_input = decode_file(str(tmp_path / "upright.jpg"))
    # JPEG re-encoding of the turned pixels differs by a level or two; a wrong turn by ~0.2.
    assert np.abs(decode_file(str(tmp_path / "sideways.jpg")) - upright_input).mean() < 0.01
    ignored = decode_file(str(tmp_path / "sideways.jpg"), exif=False)
    assert np.abs(ignored - upright_input).mean() > 0.05


def test_crop_takes_the_centre_square_and_pad_fits_inside(tmp_path):
    image = cat()  # 451x300
    image.save(tmp_path / "cat.png")
    crop = decode_file(str(tmp_path / "cat.png"), resize="crop")
    left = (451 - 300) // 2
    image.crop((left, 0, left + 300, 300)).save(tmp_path / "centre.png")
    np.testing.assert_allclose(crop, pillow_input(str(tmp_path / "centre.png"), SIZE), atol=2e-5)

    pad = decode_file(str(tmp_path / "cat.png"), resize="pad")
    inner = round(SIZE * 300 / 451)  # 32 rows of picture, the rest black bands
    top = (SIZE - inner) // 2
    assert np.all(pad[: top - 1] == 0) and np.all(pad[top + inner + 1 :] == 0)
    assert pad[top + 1 : top + inner - 1].std() > 0.05


def test_downscaling_is_antialiased_so_size_barely_matters(tmp_path):
    big = sample("space/astronaut.jpg").resize((4000, 3000), Image.LANCZOS)
    big.save(tmp_path / "big.jpg", quality=95)
    big.resize((1000, 750), Image.LANCZOS).save(tmp_path / "small.jpg", quality=95)
    difference = decode_file(str(tmp_path / "big.jpg")) - decode_file(str(tmp_path / "small.jpg"))
    assert np.abs(difference).mean() < 0.01


def png_bomb(side: int) -> bytes:
    """A valid PNG of side x side black pixels, a few hundred KB: zlib squeezes the zeros."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    squeeze = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + one gray byte per pixel
    idat = b"".join(squeeze.compress(row) for _ in range(side)) + squeeze.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def gif_frame_bomb(side: int) -> bytes:
    """A GIF whose logical screen says 1x1 and whose frame says side x side (real LZW data: a
    decoder that trusts the frame allocates and fills side**2 bytes)."""
    data = bytearray(saved(Image.new("P", (side, side), 0), "GIF"))
    data[6:10] = struct.pack("<HH", 1, 1)
    return bytes(data)


def bmp_holding_jpeg() -> bytes:
    """A BMP whose pixels are a JPEG (BI_JPEG, compression 4: for printers; nothing decodes it)."""
    jpeg = saved(cat(), "JPEG")
    header = struct.pack("<IiiHHIIiiII", 40, 451, 300, 1, 0, 4, len(jpeg), 2835, 2835, 0, 0)
    offset = 14 + len(header)
    return b"BM" + struct.pack("<IHHI", offset + len(jpeg), 0, 0, offset) + header + jpeg


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header claims width x height (decoders fill in grey)."""
    data = bytearray(saved(coffee().resize((64, 48)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def write_bad_inputs(root: Path) -> dict[str, str]:
    """Files that cannot be embedded, each with the reason efx must give."""
    root.mkdir(parents=True, exist_ok=True)
    good_jpeg = saved(cat(), "JPEG", quality=90)
    good_png = saved(cat(), "PNG")
    too_large = "image too large: {} pixels exceeds --max-pixels " + str(DEFAULT_MAX_PIXELS)
    avif = b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf" + os.urandom(64)
    gif_bomb = b"GIF89a" + struct.pack("<HH", 65535, 65535) + saved(cat(), "GIF")[10:]
    files = {
        "empty.jpg": (b"", "empty file"),
        "notes.jpg": (b"shopping list: milk, eggs\n", "not an image (text file)"),
        "page.png": (b"<!DOCTYPE html><html>404</html>", "not an image (HTML/XML/SVG text file)"),
        "truncated.jpg": (good_jpeg[: len(good_jpeg) // 2], "truncated or corrupt JPEG"),
        "truncated.png": (good_png[: len(good_png) // 2], "truncated or corrupt PNG"),
        "bad-header.jpg": (good_jpeg[:3] + os.urandom(200), "truncated or corrupt JPEG"),
        "scan.jpg": (saved(cat(), "TIFF"), "unsupported format: TIFF"),
        "photo.png": (avif, "unsupported format: AVIF"),
        "bomb.png": (png_bomb(20000), too_large.format("20000x20000")),
        "bomb.jpg": (jpeg_claiming(12000, 12000), too_large.format("12000x12000")),
        "bomb.gif": (gif_bomb, too_large.format("65535x65535")),
        "frame-bomb.gif": (gif_frame_bomb(10000), too_large.format("10000x10000")),
        "embedded-jpeg.bmp": (bmp_holding_jpeg(), "unsupported BMP compression (JPEG)"),
    }
    for name, (data, _) in files.items():
        (root / name).write_bytes(data)
    os.symlink(root / "deleted-since.jpg", root / "dangling.jpg")
    reasons = {name: reason for name, (_, reason) in files.items()}
    reasons["dangling.jpg"] = "file not found (removed, or a broken symlink)"
    return reasons


def test_each_bad_input_gets_the_reason_a_person_understands(tmp_path):
    for name, reason in write_bad_inputs(tmp_path).items():
        assert failure_reason(str(tmp_path / name), DecodeOptions(SIZE)) == reason, name


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file_is_permission_denied(tmp_path):
    (tmp_path / "secret.jpg").write_bytes(saved(cat(), "JPEG"))
    (tmp_path / "secret.jpg").chmod(0)
    assert failure_reason(str(tmp_path / "secret.jpg"), DecodeOptions(SIZE)) == "permission denied"


def test_max_pixels_is_a_setting(tmp_path):
    (tmp_path / "cat.png").write_bytes(saved(cat(), "PNG"))
    options = DecodeOptions(SIZE, max_pixels=100_000)
    assert failure_reason(str(tmp_path / "cat.png"), options) == (
        "image too large: 451x300 pixels exceeds --max-pixels 100000"
    )


@pytest.fixture
def messy_dir(tmp_path):
    """A photo collection as found in the wild: odd formats, bad files, awkward names, a loop."""
    root = tmp_path / "messy"
    good = {}
    for name in ["exif-6.jpg", "cmyk.jpg", "sixteen-bit.png", "animated.webp", "palette.bmp"]:
        good[f"odd/{name}"] = ODD_BUT_VALID[name]()
    good["names/with space.jpg"] = saved(coffee(), "JPEG")
    good["names/日本語の写真.png"] = saved(cat(), "PNG")
    for rel, data in good.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    # A name that is not valid UTF-8 (Latin-1 "café"), as old archives have.
    raw_name = os.path.join(os.fsencode(root / "names"), b"caf\xe9.jpg")
    with open(raw_name, "wb") as file:
        file.write(saved(cat().rotate(90, expand=True), "JPEG"))
    good[os.path.relpath(os.fsdecode(raw_name), root)] = b""
    (root / "names" / "line\nbreak.jpg").write_bytes(saved(coffee().rotate(180), "JPEG"))
    good["names/line\nbreak.jpg"] = b""
    os.symlink("..", root / "odd" / "loop")  # walking must not go round forever
    bad = {f"bad/{n}": r for n, r in write_bad_inputs(root / "bad").items()}
    return root, sorted(good), bad


def test_messy_collection_embeds_every_good_image_and_reports_every_bad_one(
    messy_dir, tiny_model, tmp_path
):
    root, good, bad = messy_dir
    output = str(tmp_path / "out.h5")
    summary = efx.extract(str(root), output, model=tiny_model, image_size=SIZE)
    assert (summary.embedded, summary.failed) == (len(good), len(bad))
    paths, embeddings = efx.load(output)
    assert paths == [os.path.join(str(root), rel) for rel in good]  # sorted, in order
    model = tf.saved_model.load(tiny_model)
    expected = model(tf.constant(np.stack([pillow_input(path, SIZE) for path in paths]))).numpy()
    np.testing.assert_allclose(embeddings, expected, rtol=1e-4, atol=1e-5)
    with h5py.File(output) as file:
        failures = dict(
            zip(
                file["failures/paths"].asstr()[:],
                file["failures/errors"].asstr()[:],
                strict=True,
            )
        )
        assert file.attrs["complete"]
    assert failures == {os.path.join(str(root), rel): reason for rel, reason in bad.items()}


def test_npy_shards_refuse_a_line_break_in_a_path_clearly_and_keep_the_rest(
    messy_dir, tiny_model, tmp_path
):
    root, good, bad = messy_dir
    output = tmp_path / "shards"
    summary = efx.extract(str(root), str(output), model=tiny_model, image_size=SIZE)
    assert summary.embedded == len(good) - 1
    paths, _ = efx.load(str(output))
    assert os.path.join(str(root), "names/line\nbreak.jpg") not in paths
    lines = (output / "paths-00000.txt").read_bytes().splitlines()
    assert len(lines) == len(paths)  # the text file is not corrupted by the name
    failures = [json.loads(line) for line in (output / "failures.jsonl").read_text().splitlines()]
    assert any("line break" in f["error"] and "line\nbreak" in f["path"] for f in failures)


# In one process: a warm-up run, then each folder's run with its own peak resident memory (in
# MiB; VmHWM, reset by writing 5 to /proc/self/clear_refs, Linux 4.0+), so that both runs find
# the model loaded and the decoder traced.
PEAK_RSS = """
import sys
import efx
model, folders = sys.argv[1], sys.argv[2:]
def peak_mib(folder, output):
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    efx.extract(folder, output, model=model, image_size=48)
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) // 1024
peak_mib(folders[0], folders[0] + "-warm-up.h5")
print(*(peak_mib(folder, folder + ".h5") for folder in folders))
"""


def test_decompression_bombs_neither_allocate_nor_stop_the_run(tmp_path, tiny_model):
    plain = tmp_path / "plain"
    plain.mkdir()
    for index in range(4):
        (plain / f"{index}.jpg").write_bytes(saved(cat(), "JPEG"))
    bombed = tmp_path / "bombed"
    bombed.mkdir()
    for index in range(4):
        (bombed / f"{index}.jpg").write_bytes(saved(cat(), "JPEG"))
    (bombed / "2b.png").write_bytes(png_bomb(20000))  # 0.4 GB as 8-bit, 1.6 GB as floats
    (bombed / "2c.gif").write_bytes(gif_frame_bomb(20000))  # "1x1" screen, 20000x20000 frame
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, tiny_model, str(plain), str(bombed)],
        capture_output=True, check=True, cwd=REPO,
    )  # fmt: skip
    baseline, with_bomb = map(int, out.stdout.split()[-2:])
    assert efx.load(str(bombed) + ".h5")[1].shape[0] == 4
    assert with_bomb < baseline + 150, (baseline, with_bomb)


def test_cli_resize_and_exif_flags_are_applied_and_stored(tmp_path, tiny_model):
    from click.testing import CliRunner

    from efx.cli import main

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "turned.jpg").write_bytes(exif_jpeg(6))
    output = str(tmp_path / "out.h5")
    args = ["extract", str(tmp_path / "in"), output, "-m", tiny_model, "--image-size", str(SIZE)]
    result = CliRunner().invoke(main, [*args, "--resize", "crop", "--no-exif", "-q"])
    assert result.exit_code == 0, result.output
    with h5py.File(output) as file:
        assert file.attrs["resize"] == "crop" and not file.attrs["exif_orientation"]
    info = CliRunner().invoke(main, ["info", output])
    assert "resize crop, EXIF orientation ignored" in info.output
    # Cropping the unturned (portrait-stored) picture: what efx embedded is that, not upright.
    stored = Image.open(tmp_path / "in" / "turned.jpg")
    stored.draft(stored.mode, (SIZE, SIZE))  # the reduced-scale decode efx also does
    side = min(stored.size)
    left, top = (stored.width - side) // 2, (stored.height - side) // 2
    stored.crop((left, top, left + side, top + side)).save(tmp_path / "centre.png")
    model = tf.saved_model.load(tiny_model)
    expected = model(tf.constant(pillow_input(str(tmp_path / "centre.png"), SIZE)[None]))
    np.testing.assert_allclose(efx.load(output)[1][0], expected.numpy()[0], atol=1e-4)


@pytest.mark.parametrize(
    "flags, code, message",
    [
        (["--resize", "stretch"], 2, "'stretch' is not one of 'squash', 'crop', 'pad'"),
        (["--max-pixels", "0"], 1, "--max-pixels must be a positive integer. Received: 0"),
    ],
)
def test_cli_rejects_bad_decode_settings(tmp_path, tiny_model, flags, code, message):
    from click.testing import CliRunner

    from efx.cli import main

    (tmp_path / "a.png").write_bytes(saved(cat(), "PNG"))
    args = ["extract", str(tmp_path / "a.png"), str(tmp_path / "o.h5"), "-m", tiny_model, *flags]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == code and message in result.output
    assert "Traceback" not in result.output


def test_a_listed_file_that_is_gone_by_reading_time_is_reported(tmp_path, tiny_model):
    (tmp_path / "here.jpg").write_bytes(saved(cat(), "JPEG"))
    listing = f"{tmp_path / 'here.jpg'}\n{tmp_path / 'gone.jpg'}\n".encode()
    output = str(tmp_path / "out.h5")
    summary = efx.extract("-", output, model=tiny_model, image_size=SIZE, stdin=io.BytesIO(listing))
    assert (summary.embedded, summary.failed) == (1, 1)
    with h5py.File(output) as file:
        assert list(file["failures/errors"].asstr()[:]) == [
            "file not found (removed, or a broken symlink)"
        ]


def test_large_jpeg_decoded_at_reduced_scale_gives_nearly_the_full_size_input(tmp_path):
    big = sample("space/astronaut.jpg").resize((4000, 3000), Image.LANCZOS)
    big.save(tmp_path / "big.jpg", quality=92)
    scaled = decode_file(str(tmp_path / "big.jpg"))  # libjpeg at 1/8: 500x375, then resized
    full = decode_file(str(tmp_path / "big.jpg"), jpeg_scaling=False)
    assert np.abs(scaled - full).mean() < 0.005
    np.testing.assert_allclose(scaled, pillow_input(str(tmp_path / "big.jpg"), SIZE), atol=2e-5)
