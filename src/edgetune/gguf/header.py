"""What a GGUF file holds, read from its header alone: its metadata and its tensors' names, types,
shapes and places in the file.

gguf-py's GGUFReader makes a numpy view of every string in the file, and a Qwen vocabulary holds
about 300,000 (its tokens and merges): 10-15 s per open on two cores, for the real model and the
tiny test model alike. Every stage that measures a file opens it, so this reads the same header with
`struct` in a fraction of a second and keeps only what can be asked of it: every scalar and string,
short arrays whole, and of a long array (the vocabulary) its type and length. gguf-py still gives the
format's constants (value types, block sizes), and tests check this reader against GGUFReader.
"""

import dataclasses
import functools
import math
import mmap
import struct
from pathlib import Path

from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLQuantizationType, GGUFValueType
from gguf.gguf_reader import READER_SUPPORTED_VERSIONS

LONG = 1024  # arrays longer than this are kept as their type and length only
SCALARS = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
    GGUFValueType.BOOL: "?",
}


@dataclasses.dataclass(frozen=True)
class LongArray:
    """An array too long to keep (a vocabulary): what it holds and how many."""

    type: GGUFValueType
    length: int


@dataclasses.dataclass(frozen=True)
class Tensor:
    name: str
    type: GGMLQuantizationType
    shape: tuple[int, ...]  # as the file stores it: the fastest-moving dimension first
    offset: int  # of its first byte, from the start of the file
    n_bytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


@dataclasses.dataclass(frozen=True)
class Header:
    version: int
    fields: dict  # key -> int, float, bool, str, list, or LongArray
    tensors: list[Tensor]
    data_offset: int

    @property
    def end(self) -> int:
        """Where the last tensor's bytes end: a complete file is at least this long."""
        return max((t.offset + t.n_bytes for t in self.tensors), default=self.data_offset)


def read(path: Path) -> Header:
    """The header of the GGUF at `path`; ValueError says what is wrong with a file that is not one.
    Cached per file (path, inode, size, modification time): a stage that checks a file, then
    measures it, reads it once."""
    s = Path(path).stat()
    return _read(str(path), s.st_ino, s.st_size, s.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _read(path: str, inode: int, size: int, mtime_ns: int) -> Header:
    if size == 0:
        raise ValueError("empty file")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return _Parser(data).header()


class _Parser:
    """One pass over the header, every read bounds-checked against the file's length."""

    def __init__(self, data):
        self.data, self.pos, self.order = data, 0, "<"

    def take(self, fmt: str):
        return self.take_many(fmt, 1)[0]

    def take_many(self, fmt: str, count: int) -> tuple:
        size = struct.calcsize(f"{self.order}{count}{fmt}")
        if self.pos + size > len(self.data):
            raise ValueError(f"the header ends early: {size} bytes wanted at byte {self.pos:,} of {len(self.data):,}")
        values = struct.unpack_from(f"{self.order}{count}{fmt}", self.data, self.pos)
        self.pos += size
        return values

    def string(self, keep: bool = True) -> str | None:
        n = self.take("Q")
        if self.pos + n > len(self.data):
            raise ValueError(f"a string of {n:,} bytes at byte {self.pos:,} runs past the end of the file")
        start, self.pos = self.pos, self.pos + n
        return bytes(self.data[start : self.pos]).decode("utf-8", errors="replace") if keep else None

    def value(self, raw_type: int, keep: bool = True):
        kind = _value_type(raw_type)
        if kind == GGUFValueType.STRING:
            return self.string(keep)
        if kind in SCALARS:
            if keep:
                return self.take(SCALARS[kind])
            self.skip(struct.calcsize(SCALARS[kind]))
            return None
        item, n = _value_type(self.take("I")), self.take("Q")  # an array
        keep_items = keep and n <= LONG
        if item == GGUFValueType.STRING and not keep_items:
            self.skip_strings(n)
        elif item in SCALARS:
            if keep_items:
                return list(self.take_many(SCALARS[item], n))
            self.skip(n * struct.calcsize(SCALARS[item]))
        else:
            values = [self.value(item, keep_items) for _ in range(n)]
            if keep_items:
                return values
        return LongArray(item, n) if keep else None

    def skip_strings(self, n: int) -> None:
        """Past n strings, reading only their lengths: a vocabulary in a tenth of a second."""
        length, data, pos, end = struct.Struct(f"{self.order}Q"), self.data, self.pos, len(self.data)
        for _ in range(n):
            if pos + 8 > end:
                raise ValueError(f"an array of {n:,} strings at byte {self.pos:,} runs past the end of the file")
            pos += 8 + length.unpack_from(data, pos)[0]
        if pos > end:
            raise ValueError(f"an array of {n:,} strings at byte {self.pos:,} runs past the end of the file")
        self.pos = pos

    def skip(self, n: int) -> None:
        if self.pos + n > len(self.data):
            raise ValueError(f"an array of {n:,} bytes at byte {self.pos:,} runs past the end of the file")
        self.pos += n

    def header(self) -> Header:
        if self.take("I") != GGUF_MAGIC:
            raise ValueError("no GGUF magic at its start")
        version = self.take("I")
        if version & 0xFFFF == 0:  # written on a machine of the other byte order
            self.order, version = ">", struct.unpack(">I", struct.pack("<I", version))[0]
        if version not in READER_SUPPORTED_VERSIONS:
            raise ValueError(f"GGUF version {version}; this reader knows {list(READER_SUPPORTED_VERSIONS)}")
        n_tensors, n_fields = self.take("Q"), self.take("Q")
        fields = {}
        for _ in range(n_fields):
            key = self.string()
            if key in fields:
                raise ValueError(f"the key {key!r} appears twice")
            fields[key] = self.value(self.take("I"))
        infos = []
        for _ in range(n_tensors):
            name, n_dims = self.string(), self.take("I")
            if n_dims > 4:
                raise ValueError(f"tensor {name!r} has {n_dims} dimensions (at most 4)")
            shape, raw_type, offset = self.take_many("Q", n_dims), self.take("I"), self.take("Q")
            infos.append((name, shape, _tensor_type(name, raw_type), offset))
        alignment = fields.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"general.alignment is {alignment!r}, not a power of two")
        data_offset = -(-self.pos // alignment) * alignment
        tensors = []
        for name, shape, kind, offset in infos:
            block, type_size = GGML_QUANT_SIZES[kind]
            n = math.prod(shape)
            if n % block:
                raise ValueError(f"tensor {name!r} of {n} {kind.name} values is not whole blocks of {block}")
            tensors.append(Tensor(name, kind, shape, data_offset + offset, n // block * type_size))
        return Header(version, fields, tensors, data_offset)


def _value_type(raw: int) -> GGUFValueType:
    try:
        return GGUFValueType(raw)
    except ValueError:
        raise ValueError(f"unknown metadata value type {raw}") from None


def _tensor_type(name: str, raw: int) -> GGMLQuantizationType:
    try:
        kind = GGMLQuantizationType(raw)
    except ValueError:
        raise ValueError(f"tensor {name!r} has an unknown type {raw}") from None
    if kind not in GGML_QUANT_SIZES:
        raise ValueError(f"tensor {name!r} has type {kind.name}, which has no known block size")
    return kind
