#!/usr/bin/env python3
"""Summarise a py-spy profile in text: where the samples are, by function (issue 15's profiles).

    py-spy record --format raw -o upload.txt --nonblocking -- python -m datamon.cli bundle upload ...
    python benchmarks/pyspy_summary.py upload.txt [--top 25] [--threads]

``--format raw`` is py-spy's collapsed-stack text (one ``frame;frame;... count`` line per distinct
stack; add ``--threads`` to py-spy to get the thread as the first frame). Prints the total samples,
then the functions with the most *self* samples (the frame on top of the stack) and with the most
*inclusive* samples (anywhere on the stack, counted once per stack), each as a share of all samples.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def short(frame: str) -> str:
    """``func (path/to/datamon/api/upload.py:123)`` → ``func (api/upload.py)``."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("/datamon/", "/site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("profile", type=Path)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--threads", action="store_true", help="also split the samples by thread name")
    p.add_argument("--only", metavar="THREAD", help="only the samples of threads whose name starts so")
    args = p.parse_args()
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in args.profile.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [short(f) for f in stack.split(";") if f]
        thread = "(not recorded: py-spy --threads)"
        if frames and frames[0].startswith("thread ("):
            # "thread (1234): datamon-read_0" → "datamon-read_0": pool threads share a name
            thread = re.sub(r"^thread \(\d+\):? ?", "", frames.pop(0)) or "(unnamed)"
        if not frames or (args.only and not thread.startswith(args.only)):
            continue
        total += count
        threads[thread] += count
        self_c[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    print(f"{total} samples")
    if args.threads:
        print("\nby thread:")
        for f, c in threads.most_common(args.top):
            print(f"  {c / total:6.1%}  {f}")
    print("\nself (top of stack):")
    for f, c in self_c.most_common(args.top):
        print(f"  {c / total:6.1%}  {f}")
    print("\ninclusive (anywhere on the stack):")
    for f, c in incl.most_common(args.top):
        print(f"  {c / total:6.1%}  {f}")


if __name__ == "__main__":
    main()
