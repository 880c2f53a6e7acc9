"""The ``cofisearch`` command line (also ``python -m cofisearch``).

Commands:
  demo   the main job: synthetic image-text data, trained encoders, FG vs CG vs cascade
  bench  the scalability benchmark against faiss-cpu (when installed) and NumPy
  eval   evaluate a FiCo-ITR layout directory of your own model outputs
  info   version, SIMD levels and threads

Tables go to stdout, files to ``--out`` (default ``./cofisearch-report/``). A bad argument
ends with a one-line error and exit status 2; a failure while running, with a one-line
error and exit status 1 — never a traceback. Every command checks what it can before it
works (the output directory is writable, inputs are readable, sizes fit in memory), so
that a long run does not fail at its end.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import cofisearch

from . import study
from ._bench.machine import cpu_model
from ._bench.plans import SCALES as BENCH_SCALES
from ._checks import check_int, check_output_dir, check_positive_int

DEFAULT_OUT = "cofisearch-report"


class UsageError(Exception):
    """A bad argument found after parsing: reported like argparse's own errors."""


def _positive_int(text):
    try:
        return check_positive_int(int(text), "value")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None


def _non_negative_int(text):
    try:
        return check_int(int(text), "value", minimum=0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None


def _int_list(text):
    return [_positive_int(part) for part in text.split(",") if part.strip()]


def _parser():
    parser = argparse.ArgumentParser(
        prog="cofisearch",
        description="Coarse-to-fine image-text retrieval on SIMD Hamming and float search.",
    )
    parser.add_argument("--version", action="version", version=f"cofisearch {cofisearch.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser("demo", help="synthetic ITR study: FG vs CG vs cascade (the main job)")
    demo.add_argument("--out", default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    demo.add_argument("--scale", choices=sorted(study.DEMO_SCALES), default="small",
                      help="dataset and model size (default: %(default)s, a few minutes on 2 cores)")
    demo.add_argument("--data", choices=("synthetic", "debian"), default="synthetic",
                      help="synthetic paired features (default), or Debian's package "
                      "descriptions embedded with all-MiniLM-L6-v2 (needs the text extra and "
                      "apt's lists; the scale picks the number of packages)")
    demo.add_argument("--scale-items", type=_non_negative_int, default=None, metavar="N",
                      help="captions streamed through the trained encoders for the section "
                      "at scale, where exhaustive float search meets the cascades (default: "
                      "the scale's, 1,000,000 at small; 0 skips it; 5,000,000 needs about "
                      "7 GiB at small)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=_positive_int, default=1,
                      help="search threads for the latency tables (default: %(default)s)")
    demo.add_argument("--no-fashion-mnist", action="store_true",
                      help="skip the real-data table even when Debian's Fashion-MNIST is installed")
    demo.add_argument("--no-table6", action="store_true",
                      help="skip the study's Table 6 analogue: the fusion reranker's cost over "
                      "all pairs and behind the cascade, and its R@1 (about 4 minutes at small)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")

    bench = sub.add_parser("bench", help="scalability benchmark against faiss-cpu and NumPy")
    bench.add_argument("--out", default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    bench.add_argument("--max-size", type=_positive_int, default=10_000_000,
                       help="largest database, in codes (default: %(default)s)")
    size = bench.add_mutually_exclusive_group()
    size.add_argument("--scale", choices=BENCH_SCALES, default="default",
                      help="sizes: tiny (seconds, a smoke test), quick (a minute or so), "
                      "default, full (more samples, nothing skipped) (default: %(default)s)")
    size.add_argument("--quick", action="store_const", const="quick", dest="scale",
                      help="the same as --scale quick")
    bench.add_argument("--quiet", action="store_true", help="no progress bars")

    ev = sub.add_parser("eval", help="evaluate a FiCo-ITR layout directory")
    ev.add_argument("directory", help="directory of {model}_{dataset}_img/_txt/_sim .npy files and labels")
    ev.add_argument("--out", default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    ev.add_argument("--ks", type=_int_list, default=[1, 5, 10], help="recall depths, e.g. 1,5,10,100")

    sub.add_parser("info", help="version, SIMD levels and threads")
    return parser


def cmd_info(args, out):
    rows = [
        ("version", cofisearch.__version__),
        ("python", platform.python_version()),
        ("cpu", cpu_model()),
        ("simd level", cofisearch.simd_level()),
        ("simd levels available", ", ".join(cofisearch.available_simd_levels())),
        ("COFISEARCH_SIMD", os.environ.get("COFISEARCH_SIMD", "(unset)")),
        ("threads", str(cofisearch.get_num_threads())),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}", file=out)
    return 0


def cmd_demo(args, out):
    check_output_dir(args.out, "--out")
    try:
        import torch  # noqa: F401  (checked up front: the demo trains models)
    except ImportError:
        raise RuntimeError('the demo trains torch models: pip install "cofisearch[torch]"') from None
    if args.data == "debian":
        return _demo_debian(args, out)
    preset = dict(study.DEMO_SCALES[args.scale])
    if args.scale_items is not None:
        preset["scale_items"] = args.scale_items
    print(f"cofisearch demo, scale {args.scale}: {preset}", file=out)
    result = study.run_study(seed=args.seed, num_threads=args.threads,
                             show_progress_bar=not args.quiet, **preset)
    written = result.save(args.out, "demo")
    print(result.to_markdown(), file=out)
    if not args.no_fashion_mnist:
        try:
            fashion = study.run_fashion_mnist(seed=args.seed, num_threads=args.threads)
        except FileNotFoundError as exc:
            print(f"(Fashion-MNIST table skipped: {exc})", file=out)
        else:
            written += fashion.save(args.out, "fashion_mnist")
            print(fashion.to_markdown(), file=out)
    if result.scale_summary:
        print("At scale:\n" + "\n".join(f"- {line}" for line in result.scale_summary), file=out)
    if not args.no_table6:
        written.append(_demo_table6(args, out))
    print("wrote " + ", ".join(written), file=out)
    return 0


# The Table 6 analogue's scale (cofisearch._bench.table6) at each demo scale: the study's
# 1K/5K and 10K/50K from small up, a smoke run at tiny.
_DEMO_TABLE6 = {"tiny": "tiny", "small": "quick", "medium": "default", "large": "default"}


def _demo_table6(args, out):
    from ._bench import table6

    _, tables = table6.run_table6(_DEMO_TABLE6[args.scale], num_threads=args.threads)
    text = "## FiCo-ITR Table 6 analogue: the fusion reranker\n\n" + "\n".join(
        t.to_markdown() for t in tables)
    path = os.path.join(args.out, "demo_table6.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    print(text, file=out)
    return path


def _demo_debian(args, out):
    from . import study_debian

    preset = study_debian.DEBIAN_SCALES[args.scale]
    print(f"cofisearch demo, Debian descriptions, scale {args.scale}: {preset}", file=out)
    result = study_debian.run_debian_study(seed=args.seed, num_threads=args.threads,
                                           show_progress_bar=not args.quiet, **preset)
    written = result.save(args.out, "demo_debian")
    print(result.to_markdown(), file=out)
    print("wrote " + ", ".join(written), file=out)
    return 0


def cmd_bench(args, out):
    from ._bench import runner

    runner.check_run(args.scale, args.max_size)  # sizes and memory, before the output
    check_output_dir(args.out, "--out")
    report = runner.run(scale=args.scale, max_size=args.max_size,
                        show_progress_bar=not args.quiet)
    written = runner.save(report, args.out)
    print(report.to_markdown(), file=out)
    print("wrote " + ", ".join(written), file=out)
    return 0


def cmd_eval(args, out):
    from . import datasets, metrics

    if not os.path.isdir(args.directory):
        raise UsageError(f"directory {args.directory!r} does not exist")
    found = datasets.load_fico(args.directory)  # maps the files: cheap, and checks them
    check_output_dir(args.out, "--out")
    lines = [f"## FiCo-ITR evaluation of {os.path.abspath(args.directory)}", ""]
    header = ["model", "dataset", "direction"] + [f"R@{k}" for k in args.ks] + ["MedianR", "MeanR", "mAP@N"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (model, dataset), output in sorted(found.outputs.items()):
        i2t, t2i = _evaluate_output(output, args.ks, metrics)
        for direction, values in (("i2t", i2t), ("t2i", t2i)):
            cells = [model, dataset, direction] + [_cell(values.get(f"R@{k}")) for k in args.ks]
            cells += [_cell(values.get(key)) for key in ("MedianR", "MeanR", "mAP@N")]
            lines.append("| " + " | ".join(cells) + " |")
    notes = _unused_caption_maps(found)
    if notes:
        lines += [""] + notes
    text = "\n".join(lines) + "\n"
    path = os.path.join(args.out, "eval.md")
    with open(path, "w") as f:
        f.write(text)
    print(text, file=out)
    print(f"wrote {path}", file=out)
    return 0


def _unused_caption_maps(found):
    """A line for every output evaluated without its dataset's caption map (its caption
    count differs from the map's), so that the table never hides the fallback."""
    notes = []
    for (model, dataset), output in sorted(found.outputs.items()):
        cap_map = found.caption_to_image.get(dataset)
        if cap_map is not None and output.caption_to_image is None:
            notes.append(
                f"Note: {model} on {dataset} was evaluated with an even split of captions "
                f"over images, not with the dataset's caption map: the map covers "
                f"{cap_map.shape[0]} captions, the model's outputs hold another number."
            )
    return notes


def _cell(value):
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def _evaluate_output(output, ks, metrics):
    cpi = "auto" if output.caption_to_image is None else output.caption_to_image
    if output.kind == "embeddings":
        img, txt = output.image_embeddings, output.text_embeddings
        i2t, t2i = metrics.evaluate(img, txt, captions_per_image=cpi, labels=output.labels,
                                    ks=ks, map_at=(None,) if output.labels is not None else ())
        return i2t, t2i
    if output.kind == "similarity":
        i2t, t2i = metrics.instance_retrieval(output.similarity, captions_per_image=cpi, ks=ks)
        sim = output.similarity
    else:
        i2t, t2i = metrics.instance_retrieval(output.similarity_i2t, output.similarity_t2i,
                                              captions_per_image=cpi, ks=ks)
        sim = output.similarity_i2t
    if output.labels is not None:
        map_i2t, map_t2i = metrics.category_retrieval(sim, output.labels, captions_per_image=cpi)
        i2t["mAP@N"], t2i["mAP@N"] = map_i2t, map_t2i
    return i2t, t2i


COMMANDS = {"demo": cmd_demo, "bench": cmd_bench, "eval": cmd_eval, "info": cmd_info}


def main(argv=None, out=None):
    out = sys.stdout if out is None else out
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args, out)
    except UsageError as exc:
        parser.exit(2, f"cofisearch {args.command}: error: {exc}\n")
    except KeyboardInterrupt:
        parser.exit(130, "cofisearch: interrupted\n")
    except (ValueError, TypeError, OSError, MemoryError, RuntimeError, ImportError) as exc:
        message = str(exc) or type(exc).__name__
        parser.exit(1, f"cofisearch {args.command}: error: {message}\n")


if __name__ == "__main__":
    sys.exit(main())
