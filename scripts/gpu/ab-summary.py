"""The kernels a `mla bench attention` table compares, side by side: one row per shape
(heads, batch, context, waves) that more than one kernel served, with each kernel's µs, the
fastest, and its speed-up over the first kernel listed for that shape.

Usage: ab-summary.py TITLE TABLE.md... (the tables `mla bench attention` prints; rows are
matched by their column names, so the column order may change).
"""
import os
import sys


def table_rows(path):
    """Each row of the markdown tables in `path` as a dict: column name -> cell text."""
    header, rows = None, []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("|"):
                header = None
                continue
            cells = [c.strip() for c in line.strip("|").split("|")]
            if header is None:
                header = cells
            elif not all(set(c) <= set("-:") for c in cells):
                rows.append(dict(zip(header, cells)))
    return rows


def summary(title, paths):
    shapes = {}
    # A table is missing where its benchmark was skipped or failed: the others still compare.
    missing = [p for p in paths if not os.path.exists(p)]
    for path in paths:
        if path in missing:
            continue
        for row in table_rows(path):
            if "kernel" not in row or "µs" not in row:
                continue
            key = tuple(row.get(k, "") for k in ("heads", "batch", "context", "waves"))
            try:
                micros = float(row["µs"])
            except ValueError:
                continue
            shapes.setdefault(key, {}).setdefault(row["kernel"], micros)
    if missing:
        title += f" (missing: {', '.join(missing)})"
    lines = [
        f"{title}\n",
        "| heads | batch | context | waves | µs per kernel | fastest | speed-up over the first |",
        "|---:|---:|---:|---:|---|---|---:|",
    ]
    for key, kernels in shapes.items():
        if len(kernels) < 2:
            continue
        first = next(iter(kernels.values()))
        fastest = min(kernels, key=kernels.get)
        each = ", ".join(f"{k}: {v:.1f}" for k, v in kernels.items())
        lines.append(
            f"| {' | '.join(key)} | {each} | {fastest} | {first / kernels[fastest]:.2f}× |"
        )
    if len(lines) == 3:
        lines.append("| — | — | — | — | no shape was served by two kernels | — | — |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    print(summary(sys.argv[1], sys.argv[2:]))
