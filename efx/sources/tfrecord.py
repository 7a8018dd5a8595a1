"""TFRecord files of `tf.train.Example` records (TFDS, img2dataset), plain or GZIP-compressed.

The image is the bytes feature asked for (`--image-key`), else the only bytes feature whose
value is an image file (TFDS: `image`; the Object Detection API: `image/encoded`); several are
refused with the choices named. An input's key is `FILE/N`, N the record's number from 0.

Read here in pure Python, without TensorFlow: TFRecord framing is 16 bytes around each record
(TensorFlow's `tensorflow/core/lib/io/record_writer.cc`), and `Example` is three nested
protobuf messages (`tensorflow/core/example/feature.proto`). Planning then never imports
TensorFlow, and any record can be read again by its offset (what --update and Ray workers do).
Each record's length is checked against its CRC-32C (a file that is not TFRecord, or a damaged
one, is told at once); the payload's CRC is not (pure Python would take seconds per GB): a
damaged image then fails to decode, or its record to parse, as that record's failure.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator, Sequence
from typing import BinaryIO

from ..decode.reasons import sniff_format
from ..errors import EfxError
from ..facts import Facts
from ..inputs import Input, Member
from .streams import NotImages, check_stop, open_stream, read_exactly

NOT_IMAGES = (None, "text", "HTML/XML/SVG text", "PDF")


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C (Castagnoli), rotated and offset ("masked")."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def looks_like_tfrecord(head: bytes) -> bool:
    """The first 12 bytes are a record length and its masked CRC-32C."""
    return len(head) >= 12 and struct.unpack_from("<I", head, 8)[0] == masked_crc32c(head[:8])


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data):
            raise ValueError("truncated varint")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(field number, bytes) of each length-delimited field of a protobuf message; others are
    skipped (Example's messages use only those, and varints in packed int64 lists)."""
    at = 0
    while at < len(data):
        tag, at = _varint(data, at)
        number, wire = tag >> 3, tag & 7
        if wire == 2:
            size, at = _varint(data, at)
            if at + size > len(data):
                raise ValueError("truncated field")
            yield number, data[at : at + size]
            at += size
        elif wire == 0:
            _, at = _varint(data, at)
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")


def bytes_features(record: bytes) -> dict[str, list[bytes]]:
    """An Example's features of kind bytes_list, by name (float and int64 lists are left out)."""
    found: dict[str, list[bytes]] = {}
    for number, features in _fields(record):
        if number != 1:
            continue
        for entry_number, entry in _fields(features):
            if entry_number != 1:
                continue
            name, values = "", None
            for part, value in _fields(entry):
                if part == 1:
                    name = value.decode("utf-8", "replace")
                elif part == 2:
                    values = _bytes_list(value)
            if values is not None and name:
                found[name] = values
    return found


def _bytes_list(feature: bytes) -> list[bytes] | None:
    """A Feature's bytes_list values (field 1 of Feature, field 1 of BytesList); None for a
    float or int64 list."""
    lists = [listed for kind, listed in _fields(feature) if kind == 1]
    return [item for listed in lists for n, item in _fields(listed) if n == 1] if lists else None


def _records(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(offset of the payload, payload) of each record; EOFError or ValueError on damage."""
    at = 0
    while header := stream.read(12):
        if len(header) < 12:
            raise EOFError("cut short inside a record header")
        (size,) = struct.unpack_from("<Q", header)
        if struct.unpack_from("<I", header, 8)[0] != masked_crc32c(header[:8]):
            raise ValueError("a record's length fails its CRC: corrupt")
        payload = stream.read(size)
        if len(payload) < size or len(stream.read(4)) < 4:
            raise EOFError("cut short inside a record")
        yield at + 12, payload
        at += 16 + size


def image_feature(path: str, features: dict[str, list[bytes]], asked: str | None) -> str:
    """The feature that holds the images, told from the first record; EfxError otherwise."""
    names = ", ".join(sorted(features)) or "none"  # (a protobuf map has no order)
    if asked is not None:
        if asked not in features:
            raise EfxError(
                f"{path}: its records have no bytes feature {asked!r} (bytes features: "
                f"{names}). Received: --image-key {asked}"
            )
        return asked
    images = sorted(
        n for n, v in features.items() if v and sniff_format(v[0][:64]) not in NOT_IMAGES
    )
    if len(images) == 1:
        return images[0]
    if not images:
        raise NotImages(
            f"{path}: no feature of its first record holds an image file (bytes features: "
            f"{names}): name the one that does with --image-key",
            f"{path} has no feature holding an image file, its bytes features being {names}",
        )
    raise EfxError(
        f"{path}: several features hold images ({', '.join(images)}): choose one with --image-key"
    )


def scan(path: str, shard: Facts, image_key: str | None, keep: Sequence[str] = ()) -> list[Input]:
    """The file's inputs, one per record in stored order, each with the SHA-256 of its image
    and, for each bytes feature named in `keep`, its first value as text (UTF-8); damage fails
    by the file's name after the records before it."""
    found: list[Input] = []
    feature: str | None = None  # told (or --image-key checked) by the first record
    try:
        with open_stream(path) as stream:
            for number, (at, record) in enumerate(_records(stream)):
                check_stop()
                try:
                    features = bytes_features(record)
                except ValueError as error:  # this record only: its framing was sound
                    reason = f"this record is not a tf.train.Example ({error})"
                    found.append(Input(f"{path}/{number}", path, facts=shard, reason=reason))
                    continue
                if feature is None:  # the first record tells which feature holds the images
                    feature = image_feature(path, features, image_key)
                inp = _record_input(path, shard, number, at, len(record), feature, features)
                if keep and inp.member is not None:
                    inp = inp._replace(columns=_texts(features, keep))
                found.append(inp)
    except (EOFError, ValueError, OSError) as error:
        what = str(error) if not isinstance(error, OSError) else (error.strerror or str(error))
        where = f"after record {len(found) - 1}" if found else "at its start"
        reason = f"TFRecord file damaged {where} ({what}): anything stored after that is lost"
        found.append(Input(path, path, facts=shard, reason=reason))
    return found


def _texts(features: dict[str, list[bytes]], keep: Sequence[str]) -> dict[str, str | None]:
    return {
        name: features[name][0].decode("utf-8", "replace") for name in keep if features.get(name)
    }


def _record_input(
    path: str,
    shard: Facts,
    number: int,
    at: int,
    size: int,
    feature: str,
    features: dict[str, list[bytes]],
) -> Input:
    key = f"{path}/{number}"
    values = features.get(feature)
    if not values:
        others = ", ".join(sorted(features)) or "none"
        reason = f"this record has no {feature!r} feature (its bytes features: {others})"
        return Input(key, path, facts=shard, reason=reason)
    digest = hashlib.sha256(values[0]).hexdigest()
    return Input(key, path, Member("tfrecord", at, size, feature), shard._replace(sha256=digest))


def read(path: str, members: Sequence[Member]) -> Iterator[bytes]:
    """The image bytes of `members` (ascending), in order; OSError, EOFError or ValueError if
    the file cannot give them."""
    with open_stream(path) as stream:
        for member in members:
            values = bytes_features(read_exactly(stream, member.at, member.size)).get(member.field)
            if not values:
                raise ValueError(f"the record has no {member.field!r} feature")
            yield values[0]


def find(path: str, name: str, image_key: str | None = None) -> Member | None:
    """Where record number `name` is in the file, with the feature that holds its image."""
    if not name.isdigit():
        return None
    with open_stream(path) as stream:
        for number, (at, record) in enumerate(_records(stream)):
            if number == int(name):
                features = bytes_features(record)
                return Member("tfrecord", at, len(record), image_feature(path, features, image_key))
    return None
