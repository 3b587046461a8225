"""Where a submit's time goes in the pool process: py-spy on ``pool_load.py``'s submit phase.

    pip install py-spy
    .venv/bin/python tests/bench/submit_profile.py --seconds 7 -- --connections 200 \
        --phase-seconds 10 --check-threads 1 --check-processes

Runs ``pool_load.py`` with the arguments after ``--`` (one pool run: give one
``--check-threads`` value and no ``--check-processes``, or the other way round), samples the
pool process with py-spy (all threads, 200 Hz) for ``--seconds`` of its submit phase, and
prints the share of the samples in each part of a submit: on the event-loop thread frame
read and decode, share rules, the check hand-off, ledger commit, the ack, the rest of the
submit handler, the scheduler; on other threads the ticket check (thread mode) and SQLite.
Samples of check processes (children of the pool) are counted apart; samples of idle
worker threads land in "other threads".
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOOP_PARTS = [  # the first part whose frame is on a sample's stack takes the sample
    # (the submit pipeline runs its steps inside the stage that calls back: the rules under
    # the reader, the record under the check batcher, the answer under the share log)
    # (an ack is encoded in the handler and mostly written at once by FrameSender.send_now)
    (
        "ack: encode + send (send_result, FrameSender, Session.send)",
        ["Connection.send_result", "FrameSender.", "Session.send "],
    ),
    ("share rules (lookup, precheck, header)", ["precheck ", "SessionJobs.lookup", "Job.header"]),
    (
        "submit bookkeeping (hashrate, vardiff, metrics, record)",
        ["RequestHandlers.", "ShareChecker.accepted", "ShareChecker.to_record"],
    ),
    (
        "ledger commit (ShareLog, _store)",
        ["ShareLog.", "_Batch.", "ShareChecker._store", "ShareChecker._keep"],
    ),
    ("check hand-off (CheckBatcher, IPC or thread)", ["CheckBatcher.", "_Pending."]),
    ("frame read + decode (Session._reader)", ["Session._reader "]),
    ("dispatch (Session rest, Replies writer)", ["Session.", "Replies."]),
]


def split(raw: Path, pid: int) -> collections.Counter[str]:
    """Samples of process ``pid`` in py-spy's raw output, by part of a submit."""
    parts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        at = next((i for i, f in enumerate(frames) if f.startswith(f"process {pid}:")), None)
        if at is None or len(frames) < at + 2:
            continue
        body = " ".join(frames[at + 2 :]) + " "
        if frames[at + 1].startswith("process "):  # a child: a check process
            part = "[check processes] " + ("ticket check" if "check_batches" in body else "rest")
        elif f"({pid})" not in frames[at + 1]:  # not the event-loop (main) thread
            if "check_tickets" in body or "tile_digest" in body:
                part = "[thread] ticket check (numpy)"
            elif "sqlite" in body.lower() or "ledger" in body:
                part = "[thread] ledger (SQLite)"
            else:
                part = "[thread] other threads (mostly idle workers)"
        else:
            name = next((n for n, keys in LOOP_PARTS if any(k in body for k in keys)), None)
            part = f"[loop] {name or 'trio scheduler / epoll / rest'}"
        parts[part] += int(count)
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=7.0, help="sampling time")
    parser.add_argument(
        "--gil", action="store_true", help="only samples of the thread holding the GIL (CPU)"
    )
    parser.add_argument("--keep-raw", type=Path, help="also copy py-spy's raw samples here")
    parser.add_argument("bench", nargs=argparse.REMAINDER, help="-- pool_load.py arguments")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    bench_args = [a for a in args.bench if a != "--"]
    with tempfile.TemporaryDirectory(prefix="matmine-profile-") as tmp:
        out, raw = Path(tmp) / "bench.txt", Path(tmp) / "samples.txt"
        cmd = [sys.executable, "-u", str(HERE / "pool_load.py"), *bench_args]
        with out.open("w") as sink:
            bench = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
        try:
            while not re.search(r"^\s+ping:", out.read_text(), re.M):
                if bench.poll() is not None:
                    raise SystemExit(f"pool_load.py ended early:\n{out.read_text()[-2000:]}")
                time.sleep(0.2)
            pid = int(re.findall(r"pool pid (\d+)", out.read_text())[-1])
            time.sleep(1.0)  # into the submit phase
            record = [spy, "record", "--pid", str(pid), "--threads", "--subprocesses"]
            record += ["-r", "200", *(["--gil"] if args.gil else [])]
            record += ["-d", str(int(args.seconds)), "-f", "raw", "-o", str(raw)]
            subprocess.run(record, check=True, capture_output=True)
            bench.wait(timeout=600)
        finally:
            if bench.poll() is None:
                bench.terminate()
                bench.wait()
        print(out.read_text())
        parts = split(raw, pid)
        if args.keep_raw is not None:
            shutil.copyfile(raw, args.keep_raw)
    total = sum(parts.values())
    print(f"py-spy samples of the pool process (pid {pid}) in its submit phase: {total}")
    for part, count in sorted(parts.items()):
        print(f"  {part:58s} {count:6d} {count / total:6.1%}")


if __name__ == "__main__":
    main()
