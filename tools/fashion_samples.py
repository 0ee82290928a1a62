#!/usr/bin/env python3
"""Writes the first image of each class of the Fashion-MNIST test set as a
grey PNG into data/samples/fashion/ (the README's main job classifies them).

Usage: tools/fashion_samples.py [DATASET_DIR] [OUT_DIR]
"""
import gzip
import struct
import sys
import zlib
from pathlib import Path

CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]


def png_grey(width, height, pixels):
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    rows = b"".join(b"\x00" + pixels[y * width:(y + 1) * width] for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


def main():
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else Path(__file__).resolve().parent.parent / "data/samples/fashion")
    images = gzip.open(src / "t10k-images-idx3-ubyte.gz").read()
    labels = gzip.open(src / "t10k-labels-idx1-ubyte.gz").read()
    assert struct.unpack(">II", images[:8]) == (2051, 10000) and struct.unpack(">II", labels[:8]) == (2049, 10000)
    out.mkdir(parents=True, exist_ok=True)
    done = set()
    for i in range(10000):
        label = labels[8 + i]
        if label in done:
            continue
        done.add(label)
        pixels = images[16 + i * 784:16 + (i + 1) * 784]
        (out / f"{label}-{CLASSES[label]}.png").write_bytes(png_grey(28, 28, pixels))
        if len(done) == 10:
            break


if __name__ == "__main__":
    main()
