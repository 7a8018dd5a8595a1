"""HDF5 crash recovery: a writer killed in SWMR mode leaves the "file is open" flags set in the
superblock, and HDF5 then refuses to open the file for writing until `h5clear -s` clears them.
This does what `h5clear -s --increment=0` does, for the superblock versions efx writes (2 and
3, `libver="latest"`), with the superblock's lookup3 checksum recomputed.
Layout: HDF5 File Format Specification, "Superblock Format Version 2 and 3".
"""

from __future__ import annotations

import os

from ..errors import EfxError

SIGNATURE = b"\x89HDF\r\n\x1a\n"
_FLAGS = 11  # file consistency flags: one byte
_END_OF_FILE = slice(28, 36)  # end-of-file address (8-byte offsets)
_CHECKSUM = slice(44, 48)  # lookup3 of the 44 bytes before it


def clear_crash_flags(output: str) -> None:
    """Mark an HDF5 file (superblock version 2 or 3) as closed, and make its end-of-allocation
    cover all its bytes, exactly as `h5clear -s --increment=0` does."""
    with open(output, "r+b") as file:
        block = bytearray(file.read(48))
        version, offset_size = block[8], block[9]
        if block[:8] != SIGNATURE or version not in (2, 3) or offset_size != 8:
            raise EfxError(f"cannot reopen {output}: not an HDF5 file written by efx")
        if not checksum_ok(bytes(block)):
            raise EfxError(f"cannot reopen {output}: its HDF5 superblock is damaged")
        block[_FLAGS] = 0
        end = int.from_bytes(block[_END_OF_FILE], "little")
        size = os.fstat(file.fileno()).st_size
        block[_END_OF_FILE] = max(end, size).to_bytes(8, "little")
        block[_CHECKSUM] = lookup3(bytes(block[:44])).to_bytes(4, "little")
        file.seek(0)
        file.write(block)


_MASK = 0xFFFFFFFF


def _rotate(value: int, bits: int) -> int:
    return ((value << bits) | (value >> (32 - bits))) & _MASK


def lookup3(data: bytes) -> int:
    """Bob Jenkins' lookup3 hash (hashlittle, seed 0): the checksum of HDF5's metadata."""
    a = b = c = (0xDEADBEEF + len(data)) & _MASK
    words = [
        int.from_bytes(data[i : i + 4].ljust(4, b"\0"), "little") for i in range(0, len(data), 4)
    ]
    words += [0] * (-len(words) % 3)
    if not data:
        return c
    last = (len(data) - 1) // 12 * 3
    for i in range(0, last, 3):
        a, b, c = (a + words[i]) & _MASK, (b + words[i + 1]) & _MASK, (c + words[i + 2]) & _MASK
        a = (a - c) & _MASK ^ _rotate(c, 4)
        c = (c + b) & _MASK
        b = (b - a) & _MASK ^ _rotate(a, 6)
        a = (a + c) & _MASK
        c = (c - b) & _MASK ^ _rotate(b, 8)
        b = (b + a) & _MASK
        a = (a - c) & _MASK ^ _rotate(c, 16)
        c = (c + b) & _MASK
        b = (b - a) & _MASK ^ _rotate(a, 19)
        a = (a + c) & _MASK
        c = (c - b) & _MASK ^ _rotate(b, 4)
        b = (b + a) & _MASK
    a, b, c = (
        (a + words[last]) & _MASK,
        (b + words[last + 1]) & _MASK,
        (c + words[last + 2]) & _MASK,
    )
    c = (c ^ b) - _rotate(b, 14) & _MASK
    a = (a ^ c) - _rotate(c, 11) & _MASK
    b = (b ^ a) - _rotate(a, 25) & _MASK
    c = (c ^ b) - _rotate(b, 16) & _MASK
    a = (a ^ c) - _rotate(c, 4) & _MASK
    b = (b ^ a) - _rotate(a, 14) & _MASK
    c = (c ^ b) - _rotate(b, 24) & _MASK
    return c


def checksum_ok(block: bytes) -> bool:
    """Whether the first 48 bytes of a version 2/3 superblock carry their own checksum."""
    return lookup3(block[:44]) == int.from_bytes(block[_CHECKSUM], "little")


def _version_2_or_3(output: str) -> bytes | None:
    """The first 48 bytes of the file if they start a superblock of version 2 or 3 (the ones
    efx writes), else None."""
    with open(output, "rb") as file:
        block = file.read(48)
    ours = len(block) == 48 and block[:8] == SIGNATURE and block[8] in (2, 3)
    return block if ours else None


def check(output: str) -> None:
    """Refuse a file whose superblock (version 2 or 3) fails its checksum, before HDF5 opens
    it: in SWMR mode HDF5 retries a failed checksum for about two minutes before giving up."""
    block = _version_2_or_3(output)
    if block is not None and not checksum_ok(block):
        raise EfxError(f"cannot read {output}: its HDF5 superblock is damaged")


def held_open(output: str) -> bool:
    """Whether the superblock says a writer has the file open, or had it when it was killed
    (its consistency flags are set): such a file may end, for a moment, before the end its
    superblock records, while the writer extends it."""
    block = _version_2_or_3(output)
    return block is not None and checksum_ok(block) and block[_FLAGS] != 0
