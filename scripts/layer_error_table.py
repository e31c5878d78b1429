"""Prints the README's layer-error table: qfast's weight quantizers on all-MiniLM-L6-v2's 36
linear layers, calibrated on Wikipedia paragraphs and measured on paragraphs of other articles.

    python scripts/layer_error_table.py [--calibration 64] [--heldout 64] [--per-layer]
"""

from __future__ import annotations

import argparse
import sys
import time

from qfast.model.layer_error import markdown, minilm_layer_errors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calibration", type=int, default=64, help="calibration paragraphs")
    p.add_argument("--heldout", type=int, default=64, help="held-out paragraphs")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--per-layer", action="store_true", help="also print every layer's errors")
    a = p.parse_args()
    t = time.perf_counter()
    rows = minilm_layer_errors(
        a.calibration,
        a.heldout,
        bits=a.bits,
        group_size=a.group_size,
        progress=lambda name: print(f"  {name}", file=sys.stderr),
    )
    caption = (
        f"all-MiniLM-L6-v2, {len(rows)} linear layers, {a.bits}-bit asymmetric, group "
        f"{a.group_size}; calibrated on {a.calibration} Wikipedia paragraphs, measured on "
        f"{a.heldout} paragraphs of other articles ({time.perf_counter() - t:.0f} s)"
    )
    print(markdown(rows, caption))
    if a.per_layer:
        methods = list(rows[0].errors)
        print("| layer | " + " | ".join(methods) + " |")
        print("|:--|" + "--:|" * len(methods))
        for r in rows:
            print(f"| {r.name} | " + " | ".join(f"{r.errors[m]:.4g}" for m in methods) + " |")


if __name__ == "__main__":
    main()
