"""SmolLM2-135M in llama.cpp's type mixes, measured by llama-perplexity itself: the GGUF table.

    python scripts/gguf_table.py [--mixes Q4_0,Q4_K_M,Q3_K_M] [--chunks 16] [--imatrix-chunks 32]
    python scripts/gguf_table.py --speed [--mixes Q4_K_M] [--runs 3]
    python scripts/gguf_table.py --gptq [--mixes Q4_0,Q4_K_M,Q3_K_M] [--samples 64] [--act-order]

For each mix, the F32 GGUF of SmolLM2 (``llama-quantize --allow-requantize ... F32`` of the
asset) is quantized

- by ``llama-quantize`` without and with an importance matrix (``llama-imatrix`` on
  ``--imatrix-chunks`` x 512 tokens of the calibration half of the Wikipedia sample), and
- by qfast (``qfast.gguf.requantize``, with the same importance matrix as read by
  ``qfast.load_importance_matrix``), whose files are checked to be the same bytes;

then measured by ``llama-perplexity -c 512`` on ``--chunks`` chunks of the held-out half, and
by ``qfast.evaluate`` with llama.cpp's convention and weight-only compute on the same text
(its perplexity must agree within 1%). File sizes in MB. The catch: SmolLM2's weights were
published as Q4_1, so mixes with a 32-value block and a min land near them.

``--speed``: wall time of ``qfast quantize F32.gguf -o OUT --format gguf --type MIX --threads
2`` (the CLI end to end, a fresh process) against ``llama-quantize F32.gguf OUT MIX 2``,
alternating, ``--runs`` times each; and whether the tensors are the same bytes.

``--gptq``: each mix by ``qfast.model.gguf_gptq.gptq_to_gguf`` (GPTQ inside ggml's grids, every
block linear, true-sequential, on ``--samples`` x 512 tokens of the calibration half; with
``--act-order`` GPTQ's desc_act), measured by ``llama-perplexity`` as above, with its
Kullback-Leibler divergence from the F32 model on the same chunks, and by ``qfast.evaluate``;
``--no-imatrix-grids`` chooses the grids by ggml's unweighted rule instead of its weighted
search with the Hessian's diagonal.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))
sys.path.insert(0, str(REPO / "tests"))

import llamacpp  # noqa: E402  (the harness: tools, perplexity, imatrix runs)

import qfast  # noqa: E402
from qfast.calibration.text import calibration_paragraphs, heldout_paragraphs  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mixes", default="Q4_0,Q4_K_M,Q3_K_M")
    p.add_argument("--chunks", type=int, default=16)
    p.add_argument("--imatrix-chunks", type=int, default=32)
    p.add_argument("--speed", action="store_true", help="time qfast against llama-quantize")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--gptq", action="store_true", help="GPTQ into the mixes' grids")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--act-order", action="store_true")
    p.add_argument("--no-imatrix-grids", action="store_true")
    p.add_argument("--kl", action="store_true", help="also llama-quantize's files' KL (--gptq)")
    p.add_argument(
        "--with-imatrix",
        action="store_true",
        help="--gptq: pass llama-imatrix's matrix (the mix's imatrix type rules, and the tensors "
        "GPTQ does not write), as llama-quantize --imatrix",
    )
    p.add_argument("--work", help="--gptq: a folder to keep (and reuse) the F32 log-probabilities "
                   "and the importance matrix in")  # fmt: skip
    args = p.parse_args(argv)
    bin_dir = Path(llamacpp.script().build())
    f32 = llamacpp.smollm2_f32(bin_dir)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gguf-table-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.speed:
        return speed(bin_dir, f32, work, args.mixes.split(","), args.runs)
    if args.gptq:
        return gptq(bin_dir, f32, work, args)
    held = work / "heldout.txt"
    held.write_bytes("\n".join(heldout_paragraphs(400)).encode("utf-8"))
    calib = work / "calibration.txt"
    calib.write_bytes("\n".join(calibration_paragraphs(400)).encode("utf-8"))
    imatrix_path = work / "imatrix.gguf"
    t0 = time.perf_counter()
    llamacpp._run(
        [str(bin_dir / "llama-imatrix"), "-m", str(f32), "-f", str(calib), "-o",
         str(imatrix_path), "-c", "512", "--chunks", str(args.imatrix_chunks), "-t", "2"],
    )  # fmt: skip
    print(f"llama-imatrix: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    from qfast.model.imatrix import load_importance_matrix

    imatrix = load_importance_matrix(imatrix_path)
    text = held.read_text(encoding="utf-8")
    rows = []
    for mix in args.mixes.split(","):
        for with_imatrix in (False, True):
            theirs = work / f"llama-{mix}{'-imat' if with_imatrix else ''}.gguf"
            cmd = [str(bin_dir / "llama-quantize")]
            if with_imatrix:
                cmd += ["--imatrix", str(imatrix_path)]
            llamacpp._run([*cmd, str(f32), str(theirs), mix, "2"])
            ours = work / f"qfast-{mix}{'-imat' if with_imatrix else ''}.gguf"
            t0 = time.perf_counter()
            qfast.gguf.requantize(f32, ours, mix, imatrix=imatrix if with_imatrix else None)
            seconds = time.perf_counter() - t0
            a, b = qfast.gguf.load(ours), qfast.gguf.load(theirs)
            same = all(
                a.tensors[n].type == t.type and bytes(a.tensors[n].data) == bytes(t.data)
                for n, t in b.tensors.items()
            )
            ppl = llamacpp.perplexity(bin_dir, theirs, held, n_ctx=512, chunks=args.chunks)
            model = qfast.load_model(theirs, compute="float")
            ev = qfast.evaluate(
                model, text, n_ctx=512, convention="llama.cpp", max_tokens=args.chunks * 512
            )
            rows.append(
                (
                    f"llama-quantize {mix}{' + imatrix' if with_imatrix else ''}",
                    ppl.ppl,
                    ppl.ppl_error,
                    ev.perplexity,
                    theirs.stat().st_size / 1e6,
                    "same bytes" if same else "DIFFERENT",
                    seconds,
                )
            )
            print(rows[-1], file=sys.stderr, flush=True)
    print(f"| file | llama-perplexity (-c 512, {args.chunks} chunks) | qfast.evaluate | "
          "size MB | qfast.gguf.requantize | qfast time |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, ppl, err, ev, size, same, sec in rows:
        agree = 100 * (ev / ppl - 1)
        print(
            f"| {name} | {ppl:.4f} ± {err:.4f} | {ev:.4f} ({agree:+.2f}%) | {size:.1f} | "
            f"{same} | {sec:.1f} s |"
        )
    return 0


def gptq(bin_dir: Path, f32: Path, work: Path, args: argparse.Namespace) -> int:
    from qfast.model import gguf_gptq

    held = work / "heldout.txt"
    held.write_bytes("\n".join(heldout_paragraphs(400)).encode("utf-8"))
    text = held.read_text(encoding="utf-8")
    calib = "\n".join(calibration_paragraphs(1200))
    base = work / "f32.kl"
    if not base.exists():
        f32_ppl = llamacpp.perplexity(
            bin_dir, f32, held, n_ctx=512, chunks=args.chunks, kl_base=base
        )
        print(f"F32: {f32_ppl.ppl:.4f} ± {f32_ppl.ppl_error:.4f}", file=sys.stderr, flush=True)
    grids = args.no_imatrix_grids
    if grids:  # ggml's unweighted grids
        import functools

        from qfast.algorithms.gptq_gguf import gptq_gguf

        gguf_gptq.gptq_gguf = functools.partial(gptq_gguf, imatrix=False)  # type: ignore[attr-defined]
    rows = []
    for mix in args.mixes.split(","):
        files = []
        imatrix_path = work / "imatrix.gguf"
        if args.kl or args.with_imatrix:
            if not imatrix_path.exists():
                calib_file = work / "calibration.txt"
                calib_file.write_bytes(calib.encode("utf-8"))
                llamacpp._run(
                    [str(bin_dir / "llama-imatrix"), "-m", str(f32), "-f", str(calib_file),
                     "-o", str(imatrix_path), "-c", "512", "--chunks",
                     str(args.imatrix_chunks), "-t", "2"],
                )  # fmt: skip
        if args.kl:
            for with_imatrix in (False, True):
                theirs = work / f"llama-{mix}{'-imat' if with_imatrix else ''}.gguf"
                cmd = [str(bin_dir / "llama-quantize")]
                if with_imatrix:
                    cmd += ["--imatrix", str(imatrix_path)]
                llamacpp._run([*cmd, str(f32), str(theirs), mix, "2"])
                name = f"llama-quantize {mix}{' + imatrix' if with_imatrix else ''}"
                files.append((name, theirs, 0.0))
        ours = work / f"gptq-{mix}.gguf"
        t0 = time.perf_counter()
        from qfast.model.imatrix import load_importance_matrix

        imatrix = load_importance_matrix(imatrix_path) if args.with_imatrix else None
        gguf_gptq.gptq_to_gguf(
            f32, ours, mix, calib, samples=args.samples, seq_len=512, act_order=args.act_order,
            imatrix=imatrix, overwrite=True,
        )  # fmt: skip
        how = f"{args.samples} x 512{', act-order' if args.act_order else ''}"
        how += ", + imatrix" if args.with_imatrix else ""
        how += ", unweighted grids" if grids else ""
        files.append((f"GPTQ {mix} ({how})", ours, time.perf_counter() - t0))
        for name, path, seconds in files:
            ppl = llamacpp.perplexity(
                bin_dir, path, held, n_ctx=512, chunks=args.chunks, kl_base=base, kl=True
            )
            model = qfast.load_model(path, compute="float")
            ev = qfast.evaluate(
                model, text, n_ctx=512, convention="llama.cpp", max_tokens=args.chunks * 512
            )
            rows.append((name, ppl.ppl, ppl.ppl_error, ppl.kld, ev.perplexity,
                         path.stat().st_size / 1e6, seconds))  # fmt: skip
            print(rows[-1], file=sys.stderr, flush=True)
    print(f"| file | llama-perplexity (-c 512, {args.chunks} chunks) | KL from F32 | "
          "qfast.evaluate | size MB | qfast time |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, ppl, err, kld, ev, size, sec in rows:
        agree = 100 * (ev / ppl - 1)
        print(
            f"| {name} | {ppl:.4f} ± {err:.4f} | {kld:.4f} | {ev:.4f} ({agree:+.2f}%) | "
            f"{size:.1f} | {sec:.0f} s |"
        )
    return 0


def speed(bin_dir: Path, f32: Path, work: Path, mixes: list[str], runs: int) -> int:
    import subprocess

    qfast_cli = [sys.executable, "-m", "qfast.cli"]
    env = dict(__import__("os").environ, PYTHONPATH=str(REPO / "python"))
    print("| mix | qfast min / median | llama-quantize min / median | same bytes |")
    print("|---|---|---|---|")
    for mix in mixes:
        times: dict[str, list[float]] = {"qfast": [], "llama": []}
        ours, theirs = work / f"qfast-{mix}.gguf", work / f"llama-{mix}.gguf"
        for _ in range(runs):
            t0 = time.perf_counter()
            subprocess.run(
                [str(bin_dir / "llama-quantize"), str(f32), str(theirs), mix, "2"],
                check=True, capture_output=True,
            )  # fmt: skip
            times["llama"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            subprocess.run(
                [*qfast_cli, "quantize", str(f32), "-o", str(ours), "--format", "gguf",
                 "--type", mix, "--threads", "2", "--overwrite"],
                check=True, capture_output=True, env=env,
            )  # fmt: skip
            times["qfast"].append(time.perf_counter() - t0)
        a, b = qfast.gguf.load(ours), qfast.gguf.load(theirs)
        same = all(bytes(a.tensors[n].data) == bytes(t.data) for n, t in b.tensors.items())
        q, ll = sorted(times["qfast"]), sorted(times["llama"])
        ours_s = f"{q[0]:.2f} / {q[len(q) // 2]:.2f} s"
        theirs_s = f"{ll[0]:.2f} / {ll[len(ll) // 2]:.2f} s"
        print(f"| {mix} | {ours_s} | {theirs_s} | {same} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
