"""Where each global load of a kernel is first waited for, from its sm_90a SASS (cuobjdump
-sass): the load, the instruction that waits on its scoreboard and how many instructions lie
between. A load waited for a few instructions after it is issued costs its whole latency (a
round trip to L2 or DRAM) on the warp's path; loads meant to be in flight together, or read
ahead, should be waited for far later, after all of them or at their use.

Usage: sass_waits.py SASS_FILE [--within N]   (rows for loads waited within N instructions, 16
by default; --within 0 prints every load)

The wait is read from each instruction's control bits (the upper word of the 128-bit encoding
that cuobjdump prints beside it): the write barrier a variable-latency instruction sets (bits
46–48 of that word, 7: none) and the barriers an instruction waits on (bits 52–57).
"""
import re
import sys

INSTRUCTION = re.compile(r"\s*/\*([0-9a-f]{4,6})\*/\s+(.*?)\s*;\s*/\* (0x[0-9a-f]+) \*/")
CONTROL = re.compile(r"^\s*/\* (0x[0-9a-f]+) \*/")


def instructions(lines):
    """(address, text, write barrier or None, wait mask) of each instruction, per function."""
    function, out = None, []
    for i, line in enumerate(lines):
        if "Function :" in line:
            function = line.split("Function :")[1].strip()
            continue
        m = INSTRUCTION.match(line)
        if not m or i + 1 >= len(lines):
            continue
        c = CONTROL.match(lines[i + 1])
        if not c:
            continue
        control = int(c.group(1), 16)
        barrier = (control >> 46) & 7
        out.append((function, int(m.group(1), 16), m.group(2), None if barrier == 7 else barrier,
                    (control >> 52) & 0x3F))
    return out


def waits(rows, within):
    """A line per global load (LDG, not cp.async's LDGSTS) waited for within `within`
    instructions (every one if 0), in the same function and in address order."""
    lines = []
    for i, (function, address, text, barrier, _) in enumerate(rows):
        if barrier is None or "LDG" not in text or "LDGSTS" in text:
            continue
        for j in range(i + 1, len(rows)):
            if rows[j][0] != function:
                break
            if rows[j][4] >> barrier & 1:
                gap = j - i
                if within == 0 or gap <= within:
                    lines.append(f"{function} {address:05x} {text[:48]:48s} waited {gap:4d} later at "
                                 f"{rows[j][1]:05x}: {rows[j][2][:48]}")
                break
    return lines


if __name__ == "__main__":
    args = sys.argv[1:]
    within = 16
    if "--within" in args:
        k = args.index("--within")
        within = int(args[k + 1])
        del args[k:k + 2]
    if len(args) != 1:
        sys.exit(__doc__)
    with open(args[0]) as f:
        found = waits(instructions(f.read().splitlines()), within)
    print("\n".join(found) if found else f"no global load waited for within {within} instructions")
