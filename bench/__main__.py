"""List the benchmarks (`python -m bench`); each runs on its own, often for many minutes: `python -m bench.<name>`."""

import pkgutil
from importlib import import_module
from pathlib import Path

names = [m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name not in ("common", "__main__")]
for name in names:
    doc = import_module(f"bench.{name}").__doc__ or ""
    print(f"{name:16} {doc.strip().splitlines()[0] if doc.strip() else ''}")
print("\nRun one: .venv/bin/python -m bench.<name> [--help]; it prints a table and writes bench/results/<name>.json")
