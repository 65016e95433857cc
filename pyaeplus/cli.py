"""The ``pyaeplus`` command: info, bench, train, demo, knn-graph, score."""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    from . import build_config

    cfg = build_config()
    if args.json:
        print(json.dumps(cfg, indent=2, default=str))
        return 0
    c, cu = cfg["cpu_extension"], cfg["cuda_extension"]
    print(f"pyaeplus {cfg['pyaeplus']}  (python {cfg['python']}, torch {cfg['torch']}, "
          f"triton {cfg['triton'] or '-'}, numpy {cfg['numpy']}, faiss {cfg['faiss'] or '-'})")
    if "error" in c:
        print(f"  CPU extension : NOT BUILT ({c['error']})")
    else:
        print(f"  CPU extension : built ({c['compiler']}, OpenMP {'on, ' + str(c['omp_max_threads']) + ' threads' if c['openmp'] else 'off'}); "
              f"ops: {', '.join(c['ops']) or '-'}")
    if "error" in cu:
        print(f"  CUDA extension: not built ({cu['error']})")
    else:
        dev = f"{cu.get('devices_seen', 0)} device(s) seen"
        if cu.get("device_error"):
            dev += f": {cu['device_error']}"
        print(f"  CUDA extension: built (CUDA {cu['cuda_version']}, sm {cu['architectures']}, {dev}); "
              f"ops: {', '.join(cu['ops']) or '-'}")
    gpus = ", ".join(cfg["gpus"]) or "none"
    print(f"  GPU present   : {cfg['gpu_present']} ({gpus}; torch CUDA {cfg['torch_cuda'] or '-'})")
    avail = ", ".join(k for k, v in cfg["backends_available"].items() if v)
    print(f"  backends      : in force '{cfg['backend']}', can run here: {avail}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import pathlib
    import runpy

    script = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "run_all.py"
    if not script.exists():
        print("pyaeplus bench needs a source checkout (benchmarks/ is not installed with the package)",
              file=sys.stderr)
        return 2
    sys.argv = [str(script)] + args.rest
    sys.path.insert(0, str(script.parent))
    runpy.run_path(str(script), run_name="__main__")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyaeplus", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="what was compiled, what can run here, versions")
    s.add_argument("--json", action="store_true", help="print the full build_config() as JSON")
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("bench", help="run the benchmark suite (source checkout); extra args go to run_all.py")
    s.add_argument("rest", nargs=argparse.REMAINDER)
    s.set_defaults(func=_cmd_bench)

    # ---- train / demo (pyaeplus/train.py, pyaeplus/data) -----------------------------------

    # ---- knn-graph / score --------------------------------------------------------------------

    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
