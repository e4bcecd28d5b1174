"""Stream the one file of a zip archive, inflated by ISA-L (python-isal) where the member allows.

:class:`zipfile.ZipExtFile` inflates with zlib. ISA-L's inflate (Intel's Intelligent Storage
Acceleration Library, through ``isal.isal_zlib``: https://python-isal.readthedocs.io) reads the same
raw deflate streams about twice as fast (measured in ``docs/plan.md``). A deflated, unencrypted
member is read straight from its data (the local file header's layout: PKWARE's APPNOTE.TXT, section
4.3.7) and its CRC-32 checked at the end, as zipfile does; any other member (stored, bzip2, lzma,
encrypted) is left to zipfile.
"""

from __future__ import annotations

import io
import struct
import zipfile
from typing import BinaryIO

from isal import isal_zlib

__all__ = ["open_member"]

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., file name length, extra field length
_READ = 1 << 18  # compressed bytes read per step


class _Inflated(io.RawIOBase):
    """The raw deflate data of ``info`` in ``path``, inflated on read; raises zipfile.BadZipFile when
    the header is not a local file header or the CRC-32 of the data does not match."""

    def __init__(self, path: str, info: zipfile.ZipInfo) -> None:
        super().__init__()
        self._fh = open(path, "rb")  # noqa: SIM115 (closed by close())
        try:
            self._fh.seek(info.header_offset)
            signature, name_len, extra_len = _LOCAL_HEADER.unpack(self._fh.read(_LOCAL_HEADER.size))
            if signature != b"PK\x03\x04":
                raise zipfile.BadZipFile(f"bad local file header for {info.filename!r}")
            self._fh.seek(name_len + extra_len, io.SEEK_CUR)
        except BaseException:
            self._fh.close()
            raise
        self._info, self._left, self._crc, self._pending = info, info.compress_size, 0, b""
        self._inflate = isal_zlib.decompressobj(-15)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data, self._pending = self._pending, b""
        while not data:
            tail = self._inflate.unconsumed_tail
            if tail:
                data = self._inflate.decompress(tail, len(buffer))
            elif self._left:
                chunk = self._fh.read(min(self._left, _READ))
                if not chunk:
                    raise zipfile.BadZipFile(f"{self._info.filename!r} ends before its compressed size")
                self._left -= len(chunk)
                data = self._inflate.decompress(chunk, len(buffer))
            else:
                data = self._inflate.flush()
                if not data:
                    if self._crc != self._info.CRC:
                        raise zipfile.BadZipFile(f"bad CRC-32 for file {self._info.filename!r}")
                    return 0
            self._crc = isal_zlib.crc32(data, self._crc)
        data, self._pending = data[: len(buffer)], data[len(buffer) :]  # flush() is not bounded
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._fh.close()
        super().close()


def open_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> BinaryIO:
    """A binary stream (``read``/``readinto``, not seekable) of the member ``info`` of ``archive``
    (opened from a path). Raises zipfile.BadZipFile for a damaged member."""
    if info.compress_type != zipfile.ZIP_DEFLATED or info.flag_bits & 0x1 or archive.filename is None:
        return archive.open(info)
    return _Inflated(archive.filename, info)  # type: ignore[return-value]
