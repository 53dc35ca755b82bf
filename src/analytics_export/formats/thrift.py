"""Thrift compact protocol, generic: enough to read a Parquet footer, change offsets and write it back.

A struct decodes to a list of `Field`s in file order (field id, compact type, value); lists keep
their element type. Encoding that again gives the same bytes, so only what is changed changes. A
struct value may also be given as the bytes `encode` made of it.
"""

from __future__ import annotations

from dataclasses import dataclass

STOP, TRUE, FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT = range(13)


@dataclass
class Field:
    id: int
    type: int
    value: object


@dataclass
class Sequence:
    """A list or set: its compact element type and its values."""

    type: int
    values: list


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        self.pos += 1
        return self.data[self.pos - 1]

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def value(self, kind: int) -> object:
        if kind in (TRUE, FALSE):  # inside a list a bool is a whole byte
            return self.byte()
        if kind == BYTE:
            return self.byte()
        if kind in (I16, I32, I64):
            return self.zigzag()
        if kind == DOUBLE:
            self.pos += 8
            return self.data[self.pos - 8:self.pos]
        if kind == BINARY:
            n = self.varint()
            self.pos += n
            return self.data[self.pos - n:self.pos]
        if kind in (LIST, SET):
            head = self.byte()
            size, element = head >> 4, head & 0x0F
            if size == 15:
                size = self.varint()
            return Sequence(element, [self.value(element) for _ in range(size)])
        if kind == MAP:
            size = self.varint()
            types = self.byte() if size else 0
            return [(self.value(types >> 4), self.value(types & 0x0F)) for _ in range(size)], types
        if kind == STRUCT:
            return self.struct()
        raise ValueError(f"unknown thrift compact type {kind}")

    def struct(self) -> list[Field]:
        fields: list[Field] = []
        last = 0
        while (head := self.byte()) != STOP:
            delta, kind = head >> 4, head & 0x0F
            last = last + delta if delta else self.zigzag()
            value = kind == TRUE if kind in (TRUE, FALSE) else self.value(kind)
            fields.append(Field(last, kind, value))
        return fields


class Writer:
    def __init__(self) -> None:
        self.out = bytearray()

    def varint(self, n: int) -> None:
        while n > 0x7F:
            self.out.append((n & 0x7F) | 0x80)
            n >>= 7
        self.out.append(n)

    def zigzag(self, n: int) -> None:
        self.varint((n << 1) ^ (n >> 63))

    def value(self, kind: int, value) -> None:
        if kind in (TRUE, FALSE, BYTE):
            self.out.append(value)
        elif kind in (I16, I32, I64):
            self.zigzag(value)
        elif kind == DOUBLE:
            self.out += value
        elif kind == BINARY:
            self.varint(len(value))
            self.out += value
        elif kind in (LIST, SET):
            size = len(value.values)
            if size < 15:
                self.out.append(size << 4 | value.type)
            else:
                self.out.append(0xF0 | value.type)
                self.varint(size)
            for item in value.values:
                self.value(value.type, item)
        elif kind == MAP:
            pairs, types = value
            self.varint(len(pairs))
            if pairs:
                self.out.append(types)
            for k, v in pairs:
                self.value(types >> 4, k)
                self.value(types & 0x0F, v)
        elif kind == STRUCT:
            if isinstance(value, bytes):  # a struct already encoded
                self.out += value
            else:
                self.struct(value)
        else:
            raise ValueError(f"unknown thrift compact type {kind}")

    def struct(self, fields: list[Field]) -> None:
        last = 0
        for f in fields:
            kind = (TRUE if f.value else FALSE) if f.type in (TRUE, FALSE) else f.type
            if 0 < f.id - last <= 15:
                self.out.append((f.id - last) << 4 | kind)
            else:
                self.out.append(kind)
                self.zigzag(f.id)
            if kind not in (TRUE, FALSE):
                self.value(kind, f.value)
            last = f.id
        self.out.append(STOP)


def decode(data: bytes) -> list[Field]:
    return Reader(data).struct()


def encode(fields: list[Field]) -> bytes:
    writer = Writer()
    writer.struct(fields)
    return bytes(writer.out)


def get(fields: list[Field], field_id: int) -> Field | None:
    return next((f for f in fields if f.id == field_id), None)

