#!/usr/bin/python3
"""Minimal safetensors reader in plain numpy (no `safetensors` package).

File layout (https://github.com/huggingface/safetensors):
    [8 bytes]  N, little-endian uint64 = length of the JSON header
    [N bytes]  JSON header: {name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]},
                             "__metadata__": {...}}   (offsets are relative to the data section)
    [rest]     data section

A checkpoint directory holds either one `model.safetensors` or several shards listed in
`model.safetensors.index.json` ({"metadata": {...}, "weight_map": {tensor name: shard file}}).

Tensors are memory-mapped, so opening a multi-GB checkpoint costs nothing until a tensor is read.
Supported dtypes: F32, F16, BF16 (plus F64 / integer types as plain views).
"""

import json
import os
import struct

import numpy as np

# safetensors dtype string -> numpy dtype of the stored element (BF16 is read as raw uint16 bits).
_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}


def bf16_bits_to_f32(bits):
    """uint16 bfloat16 bit patterns -> float32 (exact: bf16 is the top half of an f32)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


class SafetensorsFile:
    """One .safetensors file."""

    def __init__(self, path):
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError(f"{path}: header length {n} exceeds file size {size}")
            header = json.loads(f.read(n).decode("utf-8"))
        self.metadata = header.pop("__metadata__", {}) or {}
        self.header = header
        self.data_start = 8 + n
        self.data_len = size - self.data_start
        for name, info in header.items():
            b, e = info["data_offsets"]
            dt = _DTYPES.get(info["dtype"])
            if dt is None:
                raise ValueError(f"{path}: tensor {name}: unsupported dtype {info['dtype']}")
            count = int(np.prod(info["shape"], dtype=np.int64))
            if e - b != count * dt.itemsize or not (0 <= b <= e <= self.data_len):
                raise ValueError(f"{path}: tensor {name}: bad data_offsets {info['data_offsets']}")
        self._mm = None

    def _map(self):
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._mm

    def raw(self, name):
        """The stored tensor as a read-only numpy view (BF16 -> uint16 bits)."""
        info = self.header[name]
        b, e = info["data_offsets"]
        dt = _DTYPES[info["dtype"]]
        buf = self._map()[self.data_start + b:self.data_start + e]
        return buf.view(dt).reshape(info["shape"])


class Checkpoint:
    """All safetensors weights of a Hugging Face model directory (single file or sharded)."""

    def __init__(self, model_dir):
        self.model_dir = model_dir
        index_path = os.path.join(model_dir, "model.safetensors.index.json")
        single_path = os.path.join(model_dir, "model.safetensors")
        self.files = {}       # file name -> SafetensorsFile
        self.where = {}       # tensor name -> file name
        if os.path.exists(index_path):
            with open(index_path) as f:
                index = json.load(f)
            for name, fname in index["weight_map"].items():
                if fname not in self.files:
                    self.files[fname] = SafetensorsFile(os.path.join(model_dir, fname))
                if name not in self.files[fname].header:
                    raise ValueError(f"index maps {name} to {fname}, which does not contain it")
                self.where[name] = fname
            # every tensor in every shard must be in the index
            for fname, sf in self.files.items():
                for name in sf.header:
                    if self.where.get(name) != fname:
                        raise ValueError(f"{fname}: tensor {name} not (or differently) in the index")
        elif os.path.exists(single_path):
            self.files["model.safetensors"] = SafetensorsFile(single_path)
            for name in self.files["model.safetensors"].header:
                self.where[name] = "model.safetensors"
        else:
            raise FileNotFoundError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")

    def names(self):
        return list(self.where)

    def __contains__(self, name):
        return name in self.where

    def info(self, name):
        return self.files[self.where[name]].header[name]

    def dtype(self, name):
        return self.info(name)["dtype"]

    def shape(self, name):
        return tuple(self.info(name)["shape"])

    def raw(self, name):
        return self.files[self.where[name]].raw(name)

    def get(self, name, dtype=np.float64):
        """Tensor converted (exactly, for F32/F16/BF16) to `dtype` (default float64), as a new array."""
        raw = self.raw(name)
        if self.dtype(name) == "BF16":
            raw = bf16_bits_to_f32(raw)
        return np.array(raw, dtype=dtype)
