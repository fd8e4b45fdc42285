"""`python -m star_testing.fork_ranks --nproc N --master-port PORT [--preload MODULE ...] SCRIPT ARGS...`:
N ranks of SCRIPT on this machine, forked from one process that imported torch (and each --preload
module) once.

What torchrun does for a script, with one difference: torchrun's elastic agent starts each rank as a
fresh interpreter, which pays the imports again (5-6 CPU-seconds a rank with TRL); here the same agent
(torch's `elastic_launch`, the API torchrun itself is built on, with a static rendezvous on
127.0.0.1:PORT) runs SCRIPT as a function in ranks started with the `fork` method. Each rank gets the
environment torchrun gives (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, ...), runs SCRIPT as
`__main__` with sys.argv = [SCRIPT, *ARGS] and SCRIPT's folder first on sys.path (the launcher's working
directory stays importable, as PYTHONPATH=. would make it), and a rank that fails fails the launch.

For the tests whose many runs share one launch (tests/test_train_sharded.py, test_trl_sharded.py,
test_trl_options.py). A forked rank ends without the interpreter's exit (multiprocessing's children
do), so what happens at a real rank's exit is tested by the launches that run the documented torchrun
commands, which stay torchrun: the sharded resume and deploy/k8s/multinode's Job
(tests/test_multinode_launch.py).
"""

from __future__ import annotations

import argparse
import importlib
import os
import runpy
import sys


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m star_testing.fork_ranks", description=__doc__.split("\n")[0])
    ap.add_argument("--nproc", type=int, required=True, help="ranks on this machine")
    ap.add_argument("--master-port", type=int, required=True, help="the rendezvous port on 127.0.0.1")
    ap.add_argument("--preload", action="append", default=[], help="a module to import before forking")
    ap.add_argument("script", help="the rank's program, a Python file")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    return ap


def run_script(script: str, args: list[str]) -> None:
    """One rank: SCRIPT as `__main__` (a SystemExit with a non-zero code fails the rank)."""
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.realpath(script)))
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise RuntimeError(f"{script} exited with {exc.code}") from exc


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for name in args.preload:
        importlib.import_module(name)
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=args.nproc,
        run_id=f"fork-ranks-{os.getpid()}",
        rdzv_backend="static",
        rdzv_endpoint=f"127.0.0.1:{args.master_port}",
        rdzv_configs={"rank": 0},
        max_restarts=0,
        start_method="fork",
    )
    try:
        elastic_launch(config, run_script)(args.script, args.args)
    except ChildFailedError as exc:
        print(exc.format_msg(), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
