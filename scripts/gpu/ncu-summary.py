"""One markdown row per kernel launch from `ncu --csv --page raw --print-units base` output.

Usage: ncu-summary.py [--header] [SHAPE CSV...]: the table's header, then a row per launch in
the CSVs: shape, kernel, µs, DRAM and SM throughput (% of peak), SM active over elapsed cycles
(below 1: SMs idle during ramp or tail), achieved occupancy, waves per SM, top warp stalls.
"""
import csv
import sys

HEADER = (
    "| shape | kernel | µs | DRAM % of peak | SM % of peak | SM active / elapsed cycles "
    "| achieved occupancy % | waves per SM | top warp stalls (cycles per issue) |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---|"
)


def number(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def rows(path):
    """One dict per launch: metric name -> value, and "Kernel Name". Reads the raw page (a column
    per metric, a row per launch, a units row under the header) and, should ncu print it
    instead, the details layout (a row per metric: "Metric Name", "Metric Value")."""
    with open(path, newline="") as f:
        lines = [line for line in f if line.startswith('"')]  # the program's own output is not CSV
    table = list(csv.reader(lines))
    first = next((i for i, r in enumerate(table) if "Kernel Name" in r), None)
    if first is None:
        return []
    header = table[first]
    body = [dict(zip(header, r)) for r in table[first + 1 :]]
    body = [r for r in body if r.get("Kernel Name")]  # not the units row
    if "Metric Name" not in header:
        return body
    launches = {}
    for r in body:
        launch = launches.setdefault(r.get("ID"), {"Kernel Name": r["Kernel Name"]})
        launch[r.get("Metric Name", "")] = r.get("Metric Value", "")
    return list(launches.values())


def summary(shape, r):
    get = lambda name: number(r.get(name, ""))  # noqa: E731
    stalls = sorted(
        (
            (v, k.split("issue_stalled_")[1].split("_per_")[0])
            for k in r
            if "issue_stalled_" in k and k.endswith("_per_issue_active.ratio")
            for v in [get(k)]
            if v
        ),
        reverse=True,
    )[:3]
    active, elapsed = get("sm__cycles_active.avg"), get("gpc__cycles_elapsed.max")
    cells = [
        shape,
        r.get("Kernel Name", "?").split("(")[0],
        f"{get('gpu__time_duration.sum') / 1e3:.1f}" if get("gpu__time_duration.sum") else "?",
        f"{get('dram__throughput.avg.pct_of_peak_sustained_elapsed') or 0:.0f}",
        f"{get('sm__throughput.avg.pct_of_peak_sustained_elapsed') or 0:.0f}",
        f"{active / elapsed:.2f}" if active and elapsed else "?",
        f"{get('sm__warps_active.avg.pct_of_peak_sustained_active') or 0:.0f}",
        f"{get('launch__waves_per_multiprocessor') or 0:.2f}",
        ", ".join(f"{name} {v:.1f}" for v, name in stalls),
    ]
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--header":
        print(HEADER)
        args = args[1:]
    if not args:
        sys.exit(0)
    shape, paths = args[0], args[1:]
    for path in paths:
        launches = rows(path)
        for r in launches:
            print(summary(shape, r))
        if not launches:
            print(f"| {shape} | no launch read from {path} (its raw CSV is in the logs) | | | | | | | |")
