"""Strip outputs from notebooks before committing them (or, with --check, fail if any are stored).

    .venv/bin/python scripts/strip_notebooks.py            # strip notebooks/*.ipynb in place
    .venv/bin/python scripts/strip_notebooks.py --check    # exit 1 listing notebooks with outputs

Outputs of investigator notebooks hold raw identifiers and megabytes of
images and inlined JavaScript: they belong in case files, not in git.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from graph.notebooks import load, stored_outputs, strip_outputs  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: notebooks/*.ipynb)")
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if any outputs are stored")
    args = parser.parse_args(argv)
    paths = args.paths or sorted((REPO / "notebooks").glob("*.ipynb"))
    dirty = []
    for path in paths:
        nb = load(path)
        if not stored_outputs(nb):
            continue
        dirty.append(path)
        if not args.check:
            import nbformat

            nbformat.write(strip_outputs(nb), str(path))
            print(f"stripped {path}")
    if args.check and dirty:
        print("notebooks with stored outputs (run scripts/strip_notebooks.py):", *dirty, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
