"""calguide-calibration-report: one before → after comparison table of calibration records.

calguide-calibration-report artifacts/digits/classifiers/*/calibration.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from calguide.calibration.report import comparison_table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="calguide-calibration-report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("files", nargs="+", type=Path, help="calibration.json records")
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        print(f"calguide: error: no calibration record at {', '.join(missing)}", file=sys.stderr)
        return 2
    print(comparison_table([json.loads(f.read_text()) for f in args.files]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
