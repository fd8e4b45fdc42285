"""Starting a tiny-guard `star-scorer serve` until it is SERVING: a fresh interpreter versus a child of the
test suite's fork server (star_testing.fork_server), measured in one run.

    python benchmarks/process_launch.py [--quick] [--rounds 4]

Each round starts one scorer fresh and one forked, in alternating order, waits for SERVING and stops
it with SIGTERM. The fork server's own start (one torch and transformers import) happens before the
timed rounds, as it does in the background while pytest collects. `forked_vs_fresh` is the median
forked time over the median fresh time (below 1: forking is faster).

Last line: {"bench": "process_launch", "forked_vs_fresh": X, "fresh_s": A, "forked_s": B, "rounds": N}
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds (under 45 s on 2 cores)")
    ap.add_argument("--rounds", type=int, default=4, help="scorers started each way (default 4)")
    args = ap.parse_args(argv)
    rounds = 2 if args.quick else args.rounds
    os.environ["STAR_FORK_SERVER"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from star_testing import fork_server
    from star_testing.scorer_process import ScorerProcess, free_port
    from star_testing.tiny_guard import TinyGuardSpec, save_tiny_guard

    fork_server.prestart()
    times: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        guard = save_tiny_guard(Path(tmp) / "guard", TinyGuardSpec())
        warm = ScorerProcess(["--guard", str(guard)], Path(tmp) / "warm.log", free_port(), free_port())
        warm.start()  # waits for the fork server's imports, outside the timed rounds
        warm.stop(10)
        for r in range(rounds):
            for fresh in (True, False) if r % 2 == 0 else (False, True):
                log = Path(tmp) / f"{r}-{fresh}.log"
                srv = ScorerProcess(["--guard", str(guard)], log, free_port(), free_port(), fresh=fresh)
                t0 = time.perf_counter()
                srv.start()
                times[fresh].append(time.perf_counter() - t0)
                srv.stop(10)
    fresh_s, forked_s = statistics.median(times[True]), statistics.median(times[False])
    print(
        f"to SERVING: fresh {fresh_s:.2f} s, forked {forked_s:.2f} s (medians of {rounds})", file=sys.stderr
    )
    result = {
        "bench": "process_launch",
        "forked_vs_fresh": round(forked_s / fresh_s, 3),
        "fresh_s": round(fresh_s, 3),
        "forked_s": round(forked_s, 3),
        "rounds": rounds,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
