"""Hand-written codec for the chemtrain-deploy artifact: the proto2 message `chemsim.Model`.

```
message Model {
  required string mlir_module = 1;                      // StableHLO module as text
  message NeighborList {
    required NeighborListType type = 1;                 // SIMPLE_SPARSE = 0
    required float cutoff = 2;                          // float32, length units
    repeated int32 nbr_order = 3;                       // [newton_on, newton_off]
    optional bool half_list = 4;
  }
  enum NeighborListType { SIMPLE_SPARSE = 0; DEVICE_SPARSE = 1; SIMPLE_DENSE = 2; }
  required NeighborList neighbor_list = 4;
  optional string unit_style = 5;
}
```

No protobuf dependency: the wire format of this message is small (varints, one fixed32, three
length-delimited fields). Required fields are always written, including `type = 0` (bytes `08 00`),
which a proto3-style encoder would drop; `nbr_order` is written unpacked (the proto2 default) and
decoded packed or unpacked.
"""

from __future__ import annotations

import dataclasses
import struct

SIMPLE_SPARSE: int = 0
DEVICE_SPARSE: int = 1
SIMPLE_DENSE: int = 2
NEIGHBOR_LIST_TYPES: dict[int, str] = {0: "SIMPLE_SPARSE", 1: "DEVICE_SPARSE", 2: "SIMPLE_DENSE"}

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


@dataclasses.dataclass(frozen=True)
class PtbModel:
    """The decoded `chemsim.Model` message.

    `cutoff` is the float32 value on the wire, widened to a Python float.
    """

    mlir_module: str
    type: int
    cutoff: float
    nbr_order: tuple[int, ...]
    half_list: bool | None = None
    unit_style: str | None = None


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32 are sign-extended to 10 bytes, as protobuf does
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _tag(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _tag(field, _LEN) + _varint(len(payload)) + payload


def encode_model(
    mlir_module: str,
    *,
    cutoff: float,
    nbr_order: tuple[int, int] | list[int],
    nl_type: int = SIMPLE_SPARSE,
    half_list: bool | None = True,
    unit_style: str | None = "real",
) -> bytes:
    """Serialises a `chemsim.Model` message.

    **Arguments:**

    - `mlir_module`: the StableHLO module text.
    - `cutoff`: neighbour-list cutoff in the artifact's length unit (stored as float32).
    - `nbr_order`: exactly two values `[newton_on, newton_off]`.
    - `nl_type`: neighbour-list type (`SIMPLE_SPARSE` = 0 is what the exporter writes).
    - `half_list`: optional flag (true for SIMPLE_SPARSE); None omits it.
    - `unit_style`: LAMMPS units name; None omits it.

    **Returns:** the binary message.
    """
    nbr_order = [int(v) for v in nbr_order]
    if len(nbr_order) != 2 or min(nbr_order) < 1:
        raise ValueError(f"nbr_order must be two positive ints [newton_on, newton_off], got {nbr_order}")
    if nl_type not in NEIGHBOR_LIST_TYPES:
        raise ValueError(f"unknown neighbour-list type {nl_type}; expected one of {NEIGHBOR_LIST_TYPES}")
    cutoff32 = struct.pack("<f", float(cutoff))
    if not struct.unpack("<f", cutoff32)[0] > 0:
        raise ValueError(f"cutoff must be positive and finite, got {cutoff}")
    nl = _tag(1, _VARINT) + _varint(nl_type)  # required: written even when 0 (bytes 08 00)
    nl += _tag(2, _FIXED32) + cutoff32
    for v in nbr_order:
        nl += _tag(3, _VARINT) + _varint(v)
    if half_list is not None:
        nl += _tag(4, _VARINT) + _varint(int(bool(half_list)))
    out = _length_delimited(1, mlir_module.encode("utf-8"))
    out += _length_delimited(4, nl)
    if unit_style is not None:
        out += _length_delimited(5, unit_style.encode("utf-8"))
    return out


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint in chemsim.Model message")
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def _iter_fields(buf: bytes):
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        field, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, i = _read_varint(buf, i)
        elif wire_type == _FIXED32:
            value, i = buf[i : i + 4], i + 4
        elif wire_type == _FIXED64:
            value, i = buf[i : i + 8], i + 8
        elif wire_type == _LEN:
            n, i = _read_varint(buf, i)
            value, i = buf[i : i + n], i + n
        else:
            raise ValueError(f"unsupported wire type {wire_type} (field {field})")
        if i > len(buf):
            raise ValueError(f"truncated field {field} in chemsim.Model message")
        yield field, wire_type, value


def _int32(v: int) -> int:
    v &= (1 << 32) - 1
    return v - (1 << 32) if v >= 1 << 31 else v


def decode_model(buf: bytes) -> PtbModel:
    """Parses a `chemsim.Model` message; raises `ValueError` naming any missing required field."""
    top: dict = {}
    nl: dict = {"nbr_order": []}
    for field, wt, value in _iter_fields(bytes(buf)):
        if field == 1 and wt == _LEN:
            top["mlir_module"] = value.decode("utf-8")
        elif field == 5 and wt == _LEN:
            top["unit_style"] = value.decode("utf-8")
        elif field == 4 and wt == _LEN:
            top["neighbor_list"] = True
            for g, wt2, w in _iter_fields(value):
                if g == 1 and wt2 == _VARINT:
                    nl["type"] = w
                elif g == 2 and wt2 == _FIXED32:
                    nl["cutoff"] = struct.unpack("<f", w)[0]
                elif g == 3 and wt2 == _VARINT:
                    nl["nbr_order"].append(_int32(w))
                elif g == 3 and wt2 == _LEN:  # packed encoding
                    j = 0
                    while j < len(w):
                        x, j = _read_varint(w, j)
                        nl["nbr_order"].append(_int32(x))
                elif g == 4 and wt2 == _VARINT:
                    nl["half_list"] = bool(w)
    missing = [k for k in ("mlir_module", "neighbor_list") if k not in top]
    missing += [f"neighbor_list.{k}" for k in ("type", "cutoff") if k not in nl]
    if missing:
        raise ValueError(f"chemsim.Model message lacks required field(s) {missing}")
    return PtbModel(
        mlir_module=top["mlir_module"],
        type=nl["type"],
        cutoff=nl["cutoff"],
        nbr_order=tuple(nl["nbr_order"]),
        half_list=nl.get("half_list"),
        unit_style=top.get("unit_style"),
    )
