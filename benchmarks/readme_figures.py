"""The README's speed figures, generated from the committed benchmark results.

    python benchmarks/readme_figures.py            # rewrite the block in README.md
    python benchmarks/readme_figures.py --check    # exit 1 when README.md differs (tests/test_readme_figures.py)
    python benchmarks/readme_figures.py --print    # print the block

The block sits between ``<!-- speed-figures:begin -->`` and ``<!-- speed-figures:end -->`` in
README.md. Each row names the result file it comes from; a figure whose file or row is missing is
left out (a GPU row appears once ``benchmarks/results/*-cuda-*.json`` is committed). Speed-ups are
the anchor's median time over pyaeplus' median time in the same run (one process, same machine).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import NamedTuple

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
README = REPO / "README.md"
BEGIN, END = "<!-- speed-figures:begin -->", "<!-- speed-figures:end -->"


class Figure(NamedTuple):
    label: str                 # what is measured, as the README says it
    op: str                    # results/<op>-<device>.json
    mode: str                  # forward | backward | full
    config: dict               # keys that select the row (a subset of the row's config)
    anchors: tuple             # providers compared against, in order
    provider: str = "pyaeplus[{backend}]"
    memory: bool = False       # also quote peak memory against the first anchor


FIGURES = (
    Figure("SSIM forward, 8x3x256x256", "cpu_kernels", "forward",
           {"op": "ssim", "N": 8, "C": 3, "H": 256, "W": 256, "dtype": "float32"}, ("pytorch_msssim",)),
    Figure("SSIM forward+backward, 8x3x256x256", "cpu_kernels", "full",
           {"op": "ssim", "N": 8, "C": 3, "H": 256, "W": 256, "dtype": "float32"},
           ("pytorch_msssim", "pyaeplus[cpu] base raw")),
    Figure("SSIM forward+backward, 8x3x256x256 (before the AVX2 kernels of issue 16; memory)", "ssim", "full",
           {"N": 8, "C": 3, "H": 256, "W": 256, "dtype": "float32"},
           ("pytorch_msssim", "kornia (reflect)"), memory=True),
    Figure("SSIM forward+backward, 32x1x28x28 (before the AVX2 kernels)", "ssim", "full",
           {"N": 32, "C": 1, "H": 28, "W": 28, "dtype": "float32"}, ("pytorch_msssim",)),
    Figure("3-D SSIM forward+backward, 2x1x64x128x128", "ssim_3d", "full",
           {"N": 2, "D": 64, "H": 128, "W": 128, "dtype": "float32"}, ("pytorch_msssim",), provider="pyaeplus[general]"),
    Figure("Laplacian regularizer forward+backward, N=65536 d=64 k=10", "laplacian", "full",
           {"N": 65536, "d": 64, "dtype": "float32"}, ("torch naive gather", "torch.sparse.mm")),
    Figure("top-k + sparse decoder step, B=4096 D=16384 k=32 d_out=768", "sparse_decode", "full",
           {"step": "topk+decode", "B": 4096, "D": 16384, "k": 32, "dtype": "float32"},
           ("torch dense (topk+scatter+matmul)", "torch embedding_bag (sparsify)")),
    Figure("top-k selection (sparse output), B=4096 D=16384 k=32", "topk", "forward",
           {"B": 4096, "D": 16384, "k": 32, "dtype": "float32", "output": "sparse"}, ("torch.topk",)),
    Figure("top-k selection, bfloat16 (sparse output), B=4096 D=16384 k=32", "cpu_kernels", "forward",
           {"op": "topk", "B": 4096, "D": 16384, "k": 32, "dtype": "bfloat16", "output": "sparse"},
           ("torch.topk", "pyaeplus[cpu] base raw")),
    Figure("sparse decoder forward, B=4096 D=16384 k=32 d_out=768", "cpu_kernels", "forward",
           {"op": "sparse_decode", "B": 4096, "D": 16384, "k": 32, "d_out": 768, "dtype": "float32"},
           ("torch embedding_bag", "pyaeplus[cpu] base raw")),
    Figure("k-sparse AE training step, fused top-k encoder, B=2048 768->16384 k=32 (Adam fused)", "topk_encode",
           "full", {"step": "sae", "B": 2048, "D": 16384, "k": 32, "optimizer": "adam(fused)"},
           ("pyaeplus[cpu] dense encoder", "torch Linear+topk+embedding_bag")),
    Figure("one epoch of train.fit, DenseAE(140) batch 32 on 4998 rows (per-step overhead)", "fit", "full",
           {"group": "fit overhead", "batch": 32}, ("plain loop", "plain loop, fused Adam"), provider="train.fit"),
    Figure("train.fit + scoring.score end to end, ConvAE SSIM loss, 4096 + 4096 images", "fit", "full",
           {"group": "end to end"}, ("plain loop + pytorch-msssim",), provider="train.fit + scoring.score"),
    Figure("AutoEncoderDetector fit, generate_data 3000x300, 10 epochs", "pyod", "full",
           {"data": "generate_data", "model": "AutoEncoder"}, ("pyod AutoEncoder",),
           provider="pyaeplus AutoEncoderDetector"),
    Figure("VAEDetector fit, generate_data 3000x300, 10 epochs", "pyod", "full",
           {"data": "generate_data", "model": "VAE"}, ("pyod VAE",), provider="pyaeplus VAEDetector"),
    Figure("DeepSVDDDetector fit, generate_data 3000x300, 10 epochs", "pyod", "full",
           {"data": "generate_data", "model": "DeepSVDD"}, ("pyod DeepSVDD",), provider="pyaeplus DeepSVDDDetector"),
)
# how an anchor is named in the README where its provider name says little
ANCHOR_NAMES = {"pyaeplus[cpu] base raw": "the previous CPU kernels (df5d778, raw call, same process)"}
# Cost of the default value checks against none: check_finite="auto" vs False, one forward+backward.
FINITE_OPS = ("ssim", "topk", "sparse_decode", "laplacian")
BACKEND = {"cpu": "cpu", "cuda": "triton"}


def load(results: pathlib.Path) -> dict[str, dict[str, tuple[str, dict]]]:
    """{device tag: {op: (file name, doc)}} of the non-quick per-op results."""
    out: dict[str, dict[str, tuple[str, dict]]] = {}
    for p in sorted(results.glob("*-*.json")):
        op, _, tag = p.stem.partition("-")
        if tag.endswith("quick") or not tag or op in ("cpu", "cuda"):
            continue
        doc = json.loads(p.read_text())
        if "rows" in doc:
            out.setdefault(tag, {})[op] = (p.name, doc)
    return out


def _row(doc: dict, provider: str, mode: str, config: dict) -> dict | None:
    for r in doc["rows"]:
        c = r["config"]
        if r["provider"] == provider and r["mode"] == mode and "sweep" not in c and \
                all(c.get(k) == v for k, v in config.items()):
            return r
    return None


def _x(v: float) -> str:
    return f"{v:.2f}x" if v < 10 else f"{v:.3g}x"


def _ms(v: float) -> str:
    return f"{v / 1e3:.3g} s" if v >= 1e3 else f"{v:.3g} ms"


def _figure_line(f: Figure, name: str, doc: dict, backend: str) -> str | None:
    ours = _row(doc, f.provider.format(backend=backend), f.mode, f.config)
    if ours is None:
        return None
    parts = []
    for a in f.anchors:
        ref = _row(doc, a, f.mode, f.config)
        if ref is not None:
            parts.append(f"{_x(ref['median_ms'] / ours['median_ms'])} {ANCHOR_NAMES.get(a, a)}")
    if not parts:
        return None
    extra = ""
    ref = _row(doc, f.anchors[0], f.mode, f.config)
    if f.memory and ref is not None and ours.get("peak_mem_bytes") is not None:
        extra = f"; peak memory {ours['peak_mem_bytes'] / 2**20:.1f} MiB ({f.anchors[0]}: " \
                f"{ref['peak_mem_bytes'] / 2**20:.1f} MiB)"
    return f"| {f.label} | {_ms(ours['median_ms'])} | {', '.join(parts)}{extra} | `{name}` |"


def _finite_line(ops: dict[str, tuple[str, dict]]) -> str | None:
    parts, files = [], []
    for op in FINITE_OPS:
        if f"{op}_finite_check" not in ops:
            continue
        name, doc = ops[f"{op}_finite_check"]
        auto = next((r for r in doc["rows"] if r["provider"].startswith("check_finite='auto'")), None)
        true = next((r for r in doc["rows"] if r["provider"] == "check_finite=True"), None)
        if auto is None:
            continue
        c = doc["rows"][0]["config"]
        shape = "x".join(str(c[k]) for k in ("N", "C", "H", "W")) if "H" in c else \
            " ".join(f"{k}={v}" for k, v in c.items() if k != "dtype")
        parts.append(f"{op} ({shape}) {auto['paired']:.3f}x" + (f" (True: {true['paired']:.2f}x)" if true else ""))
        files.append(f"`{name}`")
    if not parts:
        return None
    return ("| default finite check (`check_finite=\"auto\"`) vs off, forward+backward, paired time ratio | - | "
            + "; ".join(parts) + " | " + ", ".join(files) + " |")


def render(results: pathlib.Path = RESULTS) -> str:
    """The Markdown block (markers included) for every device with committed results."""
    lines = [BEGIN, "<!-- generated by benchmarks/readme_figures.py from benchmarks/results/*.json: do not edit -->"]
    for tag, ops in sorted(load(results).items()):
        backend = BACKEND["cuda" if tag.startswith("cuda") else "cpu"]
        body = []
        for f in FIGURES:
            if f.op in ops:
                line = _figure_line(f, ops[f.op][0], ops[f.op][1], backend)
                if line:
                    body.append(line)
        fin = _finite_line(ops)
        body += [fin] if fin else []
        if not body:
            continue
        env = next(iter(ops.values()))[1]["env"]
        dev = env["device"]
        where = dev.get("name", tag) + (f", {dev['cores']} cores" if dev.get("cores") else "")
        lines += ["", f"**{where}** (`{tag}`; float32; pyaeplus and each anchor in one process, median of "
                  "repeated runs):", "", "| measured | pyaeplus | speed-up over | result file |",
                  "|---|---:|---|---|", *body]
    lines.append(END)
    return "\n".join(lines)


def splice(text: str, block: str) -> str:
    if BEGIN not in text or END not in text:
        raise ValueError(f"README.md has no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + block + tail


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when README.md is not what this would write")
    ap.add_argument("--print", action="store_true", help="print the block only")
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--readme", default=str(README))
    args = ap.parse_args(argv)
    block = render(pathlib.Path(args.results))
    if args.print:
        print(block)
        return 0
    readme = pathlib.Path(args.readme)
    text = readme.read_text()
    new = splice(text, block)
    if args.check:
        if new != text:
            print(f"{readme}: the speed figures differ from {args.results}; run python benchmarks/readme_figures.py",
                  file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    print(f"wrote the speed figures into {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
