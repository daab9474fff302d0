"""Replaces (or appends) `## ` sections of BENCHMARKS.md with the markdown read from stdin (one or more
sections, each starting with its `## ` title line)."""

import pathlib
import sys

path = pathlib.Path(sys.argv[1])
incoming = sys.stdin.read().strip()
new_sections = ["## " + p if i else p for i, p in enumerate(incoming.split("\n## "))]
text = path.read_text() if path.exists() else "# Benchmarks\n\nMeasured on the development machine; rerun with `just bench`.\n"
parts = text.split("\n## ")
head, rest = parts[0], ["## " + p for p in parts[1:]]
titles = {s.splitlines()[0].strip() for s in new_sections}
rest = [p for p in rest if p.splitlines()[0].strip() not in titles]
out = head.rstrip() + "\n\n" + "\n".join(p.rstrip() + "\n" for p in rest + [s.strip() + "\n" for s in new_sections])
path.write_text(out.replace("\n\n\n", "\n\n"))
