"""What the spec bounds leave: the cost of parsing the worst spec texts within them.

    python bench/spec_bounds.py --json bench/results_spec_bounds.json

The TOML parser's memory grows with the square of a dotted key's length, so
:func:`mmcore.spec.parse_toml` checks a spec's text against ``MAX_SPEC_BYTES``,
``MAX_KEY_PARTS`` and ``MAX_TOML_DEPTH`` before ``tomllib`` runs. This script builds, for
each shape, the largest text the bounds let through (filled to ``MAX_SPEC_BYTES`` with keys,
table headers or inline tables at the largest length and depth accepted), checks that the
bounds accept it, and parses it with ``tomllib`` in a fresh process, reporting the peak
resident memory of that process (``ru_maxrss``, the interpreter's own ~10 MB included) and
the parse time. One more case, a dotted key of 100,000 parts, shows what the bounds refuse:
it is refused on the text, in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHILD = """
import json, resource, sys, time, tomllib
from mmcore.spec import parse_toml, SpecError
text = sys.stdin.read()
t0 = time.perf_counter()
try:
    parse_toml(text, file="bench.toml")
    outcome = "accepted"
except SpecError as exc:
    outcome = "refused: " + exc.issues[0].message[:80]
seconds = time.perf_counter() - t0
print(json.dumps({"outcome": outcome, "seconds": seconds,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _fill(make_line, limit: int) -> str:
    out, size, i = [], 0, 0
    while True:
        line = make_line(i)
        if size + len(line) > limit:
            return "".join(out)
        out.append(line)
        size += len(line)
        i += 1


def cases() -> dict[str, str]:
    from mmcore.spec import MAX_KEY_PARTS, MAX_SPEC_BYTES, MAX_TOML_DEPTH

    key = ".".join(["a"] * (MAX_KEY_PARTS - 1))
    return {
        f"keys of {MAX_KEY_PARTS} parts": _fill(lambda i: f"k{i}.{key} = 1\n", MAX_SPEC_BYTES),
        f"table headers of {MAX_KEY_PARTS} parts": _fill(lambda i: f"[k{i}.{key}]\nx = 1\n", MAX_SPEC_BYTES),
        f"inline tables {(MAX_TOML_DEPTH - 1) // 2} deep (depth {MAX_TOML_DEPTH - 1})": _fill(  # a key and a brace a level
            lambda i: (
                f"k{i} = " + "{a = " * ((MAX_TOML_DEPTH - 1) // 2) + "1" + "}" * ((MAX_TOML_DEPTH - 1) // 2) + "\n"
            ),
            MAX_SPEC_BYTES,
        ),
        f"arrays {MAX_TOML_DEPTH - 1} deep": _fill(
            lambda i: f"k{i} = " + "[" * (MAX_TOML_DEPTH - 1) + "1" + "]" * (MAX_TOML_DEPTH - 1) + "\n",
            MAX_SPEC_BYTES,
        ),
        "refused: a dotted key of 100,000 parts": ".".join(["x"] * 100_000) + " = 1\n",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    results = {}
    for name, text in cases().items():
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD], input=text, capture_output=True, text=True, check=True, cwd=ROOT
        )
        r = json.loads(proc.stdout)
        r["text_bytes"] = len(text.encode())
        results[name] = r
        print(
            f"{name:45s} {r['text_bytes']:>9,} B  {r['outcome'][:40]:40s} {r['seconds']:7.2f} s  "
            f"{r['peak_rss_mib']:7.1f} MiB"
        )
    if args.json:
        from mmcore import atomic_write_text

        atomic_write_text(Path(args.json), json.dumps({"cases": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
