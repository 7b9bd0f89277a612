"""Tiny checked search-and-replace for scripted edits: fails loudly when `old` is absent."""
import sys


def edit(path, pairs):
    s = open(path).read()
    for old, new in pairs:
        if old not in s:
            sys.exit(f"{path}: text not found:\n{old}")
        s = s.replace(old, new, 1)
    open(path, "w").write(s)
