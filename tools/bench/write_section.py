"""Replaces (or appends) one `## ` section of BENCHMARKS.md with the markdown read from stdin."""

import pathlib
import sys

path = pathlib.Path(sys.argv[1])
section = sys.stdin.read().strip() + "\n"
title = section.splitlines()[0]
text = path.read_text() if path.exists() else "# Benchmarks\n\nMeasured on the development machine; rerun with `just bench`.\n"
parts = text.split("\n## ")
head, rest = parts[0], ["## " + p for p in parts[1:]]
rest = [p for p in rest if p.splitlines()[0].strip() != title.strip()]
out = head.rstrip() + "\n\n" + "\n".join(p.rstrip() + "\n" for p in rest + [section])
path.write_text(out.replace("\n\n\n", "\n\n"))
