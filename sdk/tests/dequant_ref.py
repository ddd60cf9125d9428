#!/usr/bin/env python3
"""Reference dequantization through the `gguf` Python package, for the Rust tests.

Usage: dequant_ref.py JOBS_FILE

Each line of JOBS_FILE is one tab-separated job:
  raw     TYPE   IN_PATH  OUT_PATH             dequantize the raw block bytes in IN_PATH
  tensor  MODEL  NAME  START  ROWS  OUT_PATH  dequantize rows START..START+ROWS of a tensor
TYPE is a GGMLQuantizationType name (Q4_K, F16, ...). Every output is little-endian f32.
Exit status 3 means the gguf or numpy package is missing.
"""

import sys

try:
    import numpy as np
    import gguf
    from gguf.quants import dequantize
except ImportError as e:  # the Rust side turns this into a skip
    print(f"missing python package: {e}", file=sys.stderr)
    sys.exit(3)


def write_f32(values, path):
    out = np.ascontiguousarray(values)
    if out.dtype != np.float32:
        raise SystemExit(f"{path}: dequantize returned {out.dtype}, not float32")
    out.astype("<f4", copy=False).tofile(path)


def raw_job(type_name, in_path, out_path):
    qtype = gguf.GGMLQuantizationType[type_name]
    data = np.fromfile(in_path, dtype=np.uint8)
    write_f32(dequantize(data, qtype).reshape(-1), out_path)


readers = {}


def tensor_job(model, name, start, rows, out_path):
    if model not in readers:
        readers[model] = gguf.GGUFReader(model, "r")
    tensors = [t for t in readers[model].tensors if t.name == name]
    if len(tensors) != 1:
        raise SystemExit(f"{model}: {len(tensors)} tensors named {name}")
    t = tensors[0]
    data = np.asarray(t.data)
    start, rows = int(start), int(rows)
    picked = data.reshape(-1, data.shape[-1])[start : start + rows]
    raw = np.ascontiguousarray(picked).view(np.uint8)
    write_f32(dequantize(raw, t.tensor_type).reshape(-1), out_path)


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    with open(sys.argv[1], encoding="utf-8") as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if fields == [""]:
                continue
            kind, args = fields[0], fields[1:]
            if kind == "raw" and len(args) == 3:
                raw_job(*args)
            elif kind == "tensor" and len(args) == 5:
                tensor_job(*args)
            else:
                raise SystemExit(f"bad job line: {line!r}")


if __name__ == "__main__":
    main()
