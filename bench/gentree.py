#!/usr/bin/env python3
"""gentree.py DIR MIB: a mixed file tree of about MIB mebibytes for the
files benchmark, the same for the same arguments: 40% large text files
(log-like rows, compress ~3:1), 30% random binary files (incompressible),
30% small files of 1-64 KiB (text and binary) in nested directories."""
import os
import random
import sys

root, mib = sys.argv[1], int(sys.argv[2])
total = mib << 20
rnd = random.Random(42)
os.makedirs(root, exist_ok=True)
STATUS = ["GET /api/v1/orders 200", "POST /api/v1/pay 201", "GET /healthz 200", "PUT /api/v1/items 409", "GET /static/app.js 304"]


def text(n):
    rows, size, i = [], 0, rnd.randrange(1 << 30)
    while size < n:
        row = "2026-11-%02dT%02d:%02d:%02d.%06dZ host-%03d %s user=%08x bytes=%d latency_ms=%.3f\n" % (
            1 + i % 28, i % 24, i % 60, (i * 7) % 60, rnd.randrange(10**6), i % 200, STATUS[i % 5],
            rnd.getrandbits(32), rnd.randrange(10**6), rnd.random() * 900)
        rows.append(row)
        size += len(row)
        i += 1
    return "".join(rows).encode()[:n]


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


done = 0
big_text, big_bin = int(total * 0.4), int(total * 0.3)
n = 0
while done < big_text:
    size = min(32 << 20, big_text - done)
    write(os.path.join(root, "logs", "app-%03d.log" % n), text(size))
    done += size
    n += 1
n = 0
while done < big_text + big_bin:
    size = min(24 << 20, big_text + big_bin - done)
    write(os.path.join(root, "blobs", "blob-%03d.bin" % n), os.urandom(size))
    done += size
    n += 1
n = 0
while done < total:
    size = min(rnd.randrange(1 << 10, 64 << 10), total - done)
    data = text(size) if n % 3 else os.urandom(size)
    write(os.path.join(root, "small", "d%02d" % (n % 37), "e%02d" % (n % 11), "f%06d.dat" % n), data)
    done += size
    n += 1
