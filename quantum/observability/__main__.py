"""``python -m quantum.observability [ROOT]``: regenerate the dashboards and alert rules under ``ROOT/helm/quantum``.

``ROOT`` is the repository root, the current directory by default.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from quantum.observability import write_artifacts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m quantum.observability", description=__doc__)
    parser.add_argument("root", nargs="?", type=Path, default=Path(), help="the repository root (default: .)")
    for path in write_artifacts(parser.parse_args(argv).root):
        print(path)


if __name__ == "__main__":
    main()
