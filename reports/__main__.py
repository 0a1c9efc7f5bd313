"""`python -m reports html|png|capacity-png ...`: the static report and figures, run by `harness report`/`plan`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    page = sub.add_parser("html", help="one static HTML page of every section")
    page.add_argument("runs_dir")
    page.add_argument("out")
    page.add_argument("--sweeps", default=None)
    pngs = sub.add_parser("png", help="every figure as a PNG (kaleido)")
    pngs.add_argument("runs_dir")
    pngs.add_argument("out")
    pngs.add_argument("--sweeps", default=None)
    cap = sub.add_parser("capacity-png", help="the capacity curves of one capacity.json with the demand line")
    cap.add_argument("capacity")
    cap.add_argument("out")
    cap.add_argument("--rate-per-adapter", type=float, default=None)
    args = parser.parse_args(argv)
    from reports import figures, html, views

    try:
        if args.what == "html":
            print(f"wrote {html.write_page(args.runs_dir, args.out, sweeps_root=args.sweeps)}")
        elif args.what == "png":
            print(f"wrote {len(html.write_pngs(args.runs_dir, args.out, sweeps_root=args.sweeps))} PNGs to {args.out}")
        else:
            payload = json.loads(Path(args.capacity).read_text())
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            figures.save_png(views.capacity(payload, args.rate_per_adapter)[0], args.out)
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"reports: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
