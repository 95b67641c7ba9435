#!/usr/bin/env python3
"""Small `torch.save`-format files for tests/torch_import.rs, written without PyTorch.

`torch.save` (zip format, PyTorch >= 1.6) pickles the object with CPython's own `pickle.Pickler`
(protocol 2) and a `persistent_id` that turns each storage into
`('storage', torch.<Type>Storage, key, location, numel)`; a tensor reduces to
`torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
OrderedDict())`. The records `<archive>/data.pkl`, `<archive>/byteorder` and `<archive>/data/<key>`
go into an uncompressed zip whose record data PyTorch aligns to 64 bytes with an "FB" extra field.
This script does the same with stand-in `torch` classes registered under their real module names,
so the pickle stream is CPython's and the zip is `zipfile`'s: the engine's reader is checked against
both, and against the values written here (expected.json). Standard library only.

    python3 tools/torch_fixtures.py --out tests/fixtures/torch
"""
import argparse
import collections
import io
import json
import os
import pickle
import struct
import sys
import types
import zipfile

# ----------------------------------------------------------------- stand-ins for torch ----

torch = types.ModuleType("torch")
torch_utils = types.ModuleType("torch._utils")
sys.modules["torch"] = torch
sys.modules["torch._utils"] = torch_utils

# element type name -> (storage class name, struct format)
DTYPES = {
    "F32": ("FloatStorage", "<f"),
    "F16": ("HalfStorage", "<e"),
    "BF16": ("BFloat16Storage", None),
    "I64": ("LongStorage", "<q"),
    "BOOL": ("BoolStorage", "<?"),
}

STORAGE_CLASSES = {}
for _dtype, (_cls, _) in DTYPES.items():
    STORAGE_CLASSES[_dtype] = type(_cls, (), {"__module__": "torch"})
    setattr(torch, _cls, STORAGE_CLASSES[_dtype])


def _rebuild_tensor_v2(*args):  # never called here: pickled by reference only
    raise NotImplementedError


_rebuild_tensor_v2.__module__ = "torch._utils"
torch_utils._rebuild_tensor_v2 = _rebuild_tensor_v2


def bf16_bytes(values):
    out = bytearray()
    for v in values:
        bits = struct.unpack("<I", struct.pack("<f", v))[0]
        bits += 0x7FFF + ((bits >> 16) & 1)  # round to nearest even
        out += struct.pack("<H", bits >> 16)
    return bytes(out)


def bf16_value(v):
    return struct.unpack("<f", struct.pack("<I", struct.unpack("<H", bf16_bytes([v]))[0] << 16))[0]


class Storage:
    def __init__(self, dtype, values):
        self.dtype, self.values = dtype, list(values)

    def data(self):
        if self.dtype == "BF16":
            return bf16_bytes(self.values)
        fmt = DTYPES[self.dtype][1]
        return b"".join(struct.pack(fmt, v) for v in self.values)


class Tensor:
    """A strided view of a Storage, reduced as torch.Tensor.__reduce_ex__ reduces one."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def __reduce_ex__(self, protocol):
        args = (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict())
        return (_rebuild_tensor_v2, args)

    def values(self):
        """Row-major element values of the view, as the stored type rounds them."""
        out = []

        def walk(axis, at):
            if axis == len(self.size):
                v = self.storage.values[at]
                out.append(bf16_value(v) if self.storage.dtype == "BF16" else v)
                return
            for i in range(self.size[axis]):
                walk(axis + 1, at + i * self.stride[axis])

        walk(0, self.offset)
        return out


def contiguous(dtype, values, size):
    stride, step = [], 1
    for d in reversed(size):
        stride.insert(0, step)
        step *= d
    return Tensor(Storage(dtype, values), 0, size, stride)


def save(obj, path, archive, compression=zipfile.ZIP_STORED):
    """torch.save's zip layout: data.pkl, byteorder, data/<key> for each storage, 64-byte aligned."""
    keys = {}

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                key = keys.setdefault(id(obj), (str(len(keys)), obj))[0]
                return ("storage", STORAGE_CLASSES[obj.dtype], key, "cpu", len(obj.values))
            return None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(obj)
    records = [("data.pkl", buf.getvalue()), ("byteorder", b"little")]
    records += [(f"data/{key}", storage.data()) for key, storage in sorted(keys.values(), key=lambda kv: int(kv[0]))]
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        for name, data in records:
            info = zipfile.ZipInfo(f"{archive}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = compression  # writestr takes it from the ZipInfo, not the file
            # Pad the local header with an "FB" extra field so the data starts on 64 bytes.
            header = 30 + len(info.filename.encode())
            offset = z.fp.tell() + header + 4
            pad = (-offset) % 64
            info.extra = struct.pack("<HH", 0x4246, pad) + b"\0" * pad
            z.writestr(info, data)


def expected(named):
    return [{"name": name, "dtype": t.storage.dtype, "shape": list(t.size), "values": t.values()} for name, t in named]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    out = ap.parse_args().out
    os.makedirs(out, exist_ok=True)

    # A state dict as module.state_dict() gives it: an OrderedDict with a _metadata attribute.
    weight = contiguous("F32", [0.5 * i - 1.0 for i in range(6)], (2, 3))
    shared = Storage("F32", [float(i) for i in range(10)])
    tail = Tensor(shared, 4, (2, 2), (3, 1))        # a view at an offset, rows 3 apart
    transposed = Tensor(shared, 0, (3, 2), (1, 3))  # a transposed view of the same storage
    half = contiguous("F16", [0.25, -1.5, 3.0, 65504.0], (2, 2))
    brain = contiguous("BF16", [1.0, -2.5, 3.14159, 1e-3], (4,))
    ids = contiguous("I64", [3, -1, 1 << 40], (3,))
    flags = contiguous("BOOL", [True, False], (2,))
    state = collections.OrderedDict(
        [
            ("fc.weight", weight),
            ("layers.0.tail", tail),
            ("layers.0.transposed", transposed),
            ("layers.0.half", half),
            ("norm.weight", brain),
            ("tied.weight", weight),  # the same tensor under two names (memo)
            ("buffers.ids", ids),
            ("buffers.flags", flags),
        ]
    )
    state._metadata = collections.OrderedDict([("", {"version": 1}), ("fc", {"version": 1})])
    save(state, os.path.join(out, "state_dict.bin"), "archive")

    # A reference ge_data dump: a plain dict of one conversation's tensors.
    hidden = contiguous("F16", [0.125 * i for i in range(12)], (3, 4))
    dump = {
        "input_ids": contiguous("I64", [1, 42, 7], (3,)),
        "hidden_state": hidden,
        "loss_mask": contiguous("I64", [0, 1, 1], (3,)),
    }
    save(dump, os.path.join(out, "data_0.ckpt"), "data_0")

    # A pickle that calls something other than torch's rebuild functions (here `print`, harmless
    # even under torch.load): the reader must refuse it by name, not run it.
    class Hostile:
        def __reduce__(self):
            return (print, ("a pickle ran code",))

    save({"fc.weight": weight, "payload": Hostile()}, os.path.join(out, "hostile.bin"), "archive")

    # The same dump with its records deflated, which torch.save never does: refused by record.
    save(dump, os.path.join(out, "deflated.ckpt"), "data_0", zipfile.ZIP_DEFLATED)

    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(
            {"state_dict.bin": expected(state.items()), "data_0.ckpt": expected(dump.items())},
            f,
            indent=1,
        )
        f.write("\n")
    print(f"wrote {out}/state_dict.bin, data_0.ckpt, hostile.bin, deflated.ckpt, expected.json")


if __name__ == "__main__":
    main()
