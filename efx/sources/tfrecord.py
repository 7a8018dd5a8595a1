"""TFRecord files of `tf.train.Example` or `tf.train.SequenceExample` records (TFDS,
img2dataset, video datasets), plain, GZIP- or ZLIB-compressed (told by content).

The image is the bytes feature asked for (`--image-key`), else the only bytes feature holding
image files in the first record that holds any (a first record with an empty or damaged image
does not decide a file); several are refused with the choices named. A SequenceExample's
feature list (a clip's `frames`) is a feature whose values are its steps'. An input's key is
`FILE/N`, N the record's number from 0; a record whose feature holds several images (a gallery,
a clip), one input per image, `FILE/N/I` with I from 0, as `tf.io.VarLenFeature` lists them.

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
import itertools
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

from ..decode.reasons import NOT_IMAGES, head_reason, sniff_format
from ..errors import EfxError
from ..facts import Facts
from ..inputs import Input, Member
from .streams import Ambiguous, NotImages, check_stop, is_zlib, open_stream, read_exactly


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


def looks_like_zlib_tfrecord(head: bytes) -> bool:
    """A zlib stream (TFRecordOptions(compression_type="ZLIB")) whose first bytes, inflated,
    are a TFRecord record's length and its CRC-32C."""
    plain = looks_like_tfrecord(head)
    return is_zlib(head) and not plain and looks_like_tfrecord(inflated(head))


def inflated(head: bytes) -> bytes:
    """The first bytes `head` inflates to, if it is a zlib stream's start; else `head`."""
    if not is_zlib(head):
        return head
    try:
        return zlib.decompressobj().decompress(head, 16)
    except zlib.error:
        return head


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
    """A record's bytes values by feature name: a `tf.train.Example`'s features, or a
    `tf.train.SequenceExample`'s context features and feature lists (a clip's `frames`: the
    one value of each step, in order), as `tf.io.parse_single_sequence_example` gives them.
    Float and int64 lists are left out. ValueError for a record that is neither."""
    found: dict[str, list[bytes]] = {}
    for number, message in _fields(record):
        if number == 1:  # Example.features, SequenceExample.context
            for name, feature in _entries(message):
                if (values := _bytes_list(feature)) is not None:
                    found[name] = values
        elif number == 2:  # SequenceExample.feature_lists: map<string, FeatureList>
            for name, steps in _entries(message):
                values = []
                for kind, feature in _fields(steps):  # FeatureList.feature, repeated
                    if kind == 1:
                        values.extend(_bytes_list(feature) or [])
                found[name] = values
    return found


def _entries(message: bytes) -> Iterator[tuple[str, bytes]]:
    """(key, value) of each entry of a protobuf map<string, message> (field 1 of `message`)."""
    for number, entry in _fields(message):
        if number != 1:
            continue
        name, value = "", b""
        for part, data in _fields(entry):
            if part == 1:
                name = data.decode("utf-8", "replace")
            elif part == 2:
                value = data
        if name:
            yield name, value


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


def _image_names(features: dict[str, list[bytes]]) -> list[str]:
    """The features of a record whose values include an image file."""
    return sorted(
        name
        for name, values in features.items()
        if any(sniff_format(value[:64]) not in NOT_IMAGES for value in values)
    )


def image_feature(
    path: str, asked: str | None, stop: Callable[[], None] = check_stop
) -> str | None:
    """The feature that holds the images: `asked`, else the only one holding image files in
    the first record that holds any (a record with an empty or damaged image, or none, does
    not decide). NotImages when no record holds an image file, Ambiguous when one holds them
    in several features; None when the file is damaged before any record holding an image
    (`scan` then says where), or holds no record (TensorFlow's writer leaves an empty file
    when it was given none: zero rows)."""
    if asked is not None:
        return asked
    names: set[str] = set()
    seen = 0
    with open_stream(path, looks_like_tfrecord) as stream:
        records = _records(stream)
        while True:
            try:
                _at, record = next(records)
            except StopIteration:
                break
            except (EOFError, ValueError, OSError):
                return None
            seen += 1
            stop()  # (a listing stops on Ctrl-C; a look-up by key never does)
            try:
                features = bytes_features(record)
            except ValueError:
                continue
            names.update(features)
            images = _image_names(features)
            if len(images) == 1:
                return images[0]
            if images:
                raise Ambiguous(
                    f"{path}: several features hold images ({', '.join(images)}): choose one "
                    "with --image-key"
                )
    if not seen:
        return None
    found = ", ".join(sorted(names)) or "none"
    raise NotImages(
        f"{path}: no feature of any record holds an image file (bytes features: {found}): "
        "name the one that does with --image-key",
        f"{path} has no feature holding an image file, its bytes features being {found}",
    )


def scan(path: str, shard: Facts, image_key: str | None, keep: Sequence[str] = ()) -> list[Input]:
    """The file's inputs in stored order, each with the SHA-256 of its image and, for each
    bytes feature named in `keep`, its first value as text (UTF-8): one per record, keyed
    `FILE/N`; a record whose feature holds several images (a gallery, a clip's frames), one
    per image, keyed `FILE/N/I`. Damage fails by the file's name after the records before it.
    EfxError when no record has the feature `--image-key` names."""
    feature = image_feature(path, image_key)
    found: list[Input] = []
    records, named, names = 0, False, set[str]()
    try:
        with open_stream(path, looks_like_tfrecord) as stream:
            for number, (at, record) in enumerate(_records(stream)):
                check_stop()
                records += 1
                try:
                    features = bytes_features(record)
                except ValueError as error:  # this record only: its framing was sound
                    reason = f"this record is not a tf.train.Example ({error})"
                    found.append(Input(f"{path}/{number}", path, facts=shard, reason=reason))
                    continue
                if feature is None:  # damaged before any image: the damage is the failure
                    continue
                named = named or feature in features
                names.update(features)
                texts = _texts(features, keep) if keep else None
                for inp in _record_inputs(path, shard, number, at, len(record), feature, features):
                    found.append(inp._replace(columns=texts) if inp.member is not None else inp)
    except (EOFError, ValueError, OSError) as error:
        what = str(error) if not isinstance(error, OSError) else (error.strerror or str(error))
        where = f"after record {records - 1}" if records else "at its start"
        reason = f"TFRecord file damaged {where} ({what}): anything stored after that is lost"
        found.append(Input(path, path, facts=shard, reason=reason))
    if image_key is not None and records and not named:
        listed = ", ".join(sorted(names)) or "none"
        raise EfxError(
            f"{path}: its records have no bytes feature {image_key!r} (bytes features: "
            f"{listed}). Received: --image-key {image_key}"
        )
    return found


def _texts(features: dict[str, list[bytes]], keep: Sequence[str]) -> dict[str, str | None]:
    return {
        name: features[name][0].decode("utf-8", "replace") for name in keep if features.get(name)
    }


def _record_inputs(
    path: str,
    shard: Facts,
    number: int,
    at: int,
    size: int,
    feature: str,
    features: dict[str, list[bytes]],
) -> list[Input]:
    key = f"{path}/{number}"
    values = features.get(feature)
    if values is None:
        others = ", ".join(sorted(features)) or "none"
        reason = f"this record has no {feature!r} feature (its bytes features: {others})"
        return [Input(key, path, facts=shard, reason=reason)]
    if not values:
        reason = f"no image in this record: its {feature!r} feature holds no value"
        return [Input(key, path, facts=shard, reason=reason)]
    inputs = []
    for item, value in enumerate(values):
        name = key if len(values) == 1 else f"{key}/{item}"
        if not value:
            reason = f"no image in this record: its {feature!r} value is empty (0 bytes)"
            inputs.append(Input(name, path, facts=shard, reason=reason))
            continue
        facts = shard._replace(sha256=hashlib.sha256(value).hexdigest())
        member = Member("tfrecord", at, size, feature, item)
        inputs.append(Input(name, path, member, facts, reason=head_reason(value[:64])))
    return inputs


def read(path: str, members: Sequence[Member]) -> Iterator[bytes]:
    """The image bytes of `members` (ascending), in order; OSError, EOFError or ValueError if
    the file cannot give them. Several images of one record read it once."""
    last: tuple[int, dict[str, list[bytes]]] = (-1, {})
    with open_stream(path, looks_like_tfrecord) as stream:
        for member in members:
            if member.at != last[0]:
                last = (member.at, bytes_features(read_exactly(stream, member.at, member.size)))
            values = last[1].get(member.field) or []
            if member.item >= len(values):
                raise ValueError(f"the record has no image {member.item} in {member.field!r}")
            yield values[member.item]


def find(path: str, name: str, image_key: str | None = None) -> Member | None:
    """Where image `name` (`N`, or `N/I` in a record of several) is in the file."""
    number, _, item = name.partition("/")
    if not number.isdigit() or (item and not item.isdigit()):
        return None
    feature = image_feature(path, image_key, stop=lambda: None)
    if feature is None:
        return None
    with open_stream(path, looks_like_tfrecord) as stream:
        for at, record in itertools.islice(_records(stream), int(number), None):
            values = bytes_features(record).get(feature) or []
            index = int(item) if item else 0
            if (len(values) > 1) == bool(item) and index < len(values):
                return Member("tfrecord", at, len(record), feature, index)
            return None
    return None
