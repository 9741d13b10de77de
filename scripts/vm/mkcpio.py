#!/usr/bin/env python3
"""Writes a newc cpio archive from a manifest on stdin, deterministically.

Each manifest line is one entry: `dir PATH MODE`, `file PATH MODE SOURCE`,
`link PATH TARGET` or `char PATH MODE MAJOR MINOR`. Entries are written
sorted by path, owned by 0:0, with the mtime given, so the archive depends
on the manifest and the sources' bytes only (and device nodes need no
privilege to make).
"""
import sys

TYPES = {"dir": 0o040000, "file": 0o100000, "link": 0o120000, "char": 0o020000}


def header(ino, mode, nlink, mtime, size, major, minor, name):
    # uid, gid, devmajor, devminor and check are 0; major/minor are rdev.
    fields = [ino, mode, 0, 0, nlink, mtime, size, 0, 0, major, minor, len(name) + 1, 0]
    return b"070701" + b"".join(b"%08X" % f for f in fields) + name + b"\0"


def pad(n):
    return b"\0" * ((4 - n % 4) % 4)


def main():
    mtime = int(sys.argv[1])
    entries = []
    for line in sys.stdin:
        f = line.split()
        if f:
            entries.append(f)
    entries.sort(key=lambda f: f[1].encode())
    out = sys.stdout.buffer
    ino = 1
    for f in entries:
        kind, path = f[0], f[1].lstrip("/").encode()
        major = minor = 0
        if kind == "link":
            mode, data = 0o777, f[2].encode()
        elif kind == "file":
            mode = int(f[2], 8)
            with open(f[3], "rb") as src:
                data = src.read()
        elif kind == "char":
            mode, data, major, minor = int(f[2], 8), b"", int(f[3]), int(f[4])
        else:
            mode, data = int(f[2], 8), b""
        nlink = 2 if kind == "dir" else 1
        h = header(ino, TYPES[kind] | mode, nlink, mtime, len(data), major, minor, path)
        out.write(h + pad(len(h)) + data + pad(len(data)))
        ino += 1
    t = header(0, 0, 1, 0, 0, 0, 0, b"TRAILER!!!")
    out.write(t + pad(len(t)))


main()
