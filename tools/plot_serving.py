#!/usr/bin/python3
"""Plot a bench_serving sweep: several result JSONs (one per --max-concurrency) into one PNG.

    tools/plot_serving.py --out docs/img/serving_stories260k.png \
        --title "stories260K, random 128 in / 64 out" results/c1.json results/c8.json ...

Panels, against the concurrency cap of each run (--max-concurrency; the number of prompts for
runs without a cap):
    1. output and total token throughput (tok/s), and the decode roofline when the run measured
       the machine's ceilings;
    2. time to first token, median and p99 (ms, log scale);
    3. inter-token latency, median and p99, and median TPOT (ms, log scale).
The roofline is drawn only when it is within 3x of the measured throughput (a tiny model's is
printed as a note instead).

--markdown prints the runs as a markdown table (for docs/benchmarks.md); it needs no matplotlib.

Comparing configurations: give files as LABEL=path (e.g. "tp 2=tp2_c8.json"); runs with the same
label form one series, and each panel shows every series' output tok/s, TTFT median and ITL median.

Tool dependency only: matplotlib (Debian package `python3-matplotlib`, `apt-get install
python3-matplotlib`). Neither the build nor the tests need it.
"""

import argparse
import json
import os
import sys


def load(paths):
    runs = []
    for p in paths:
        with open(p) as f:
            j = json.load(f)
        cap = j.get("max_concurrency") or j.get("num_prompts")
        runs.append((cap, j))
    runs.sort(key=lambda r: r[0])
    return runs


def plot_compare(args, plt):
    series = {}
    for spec in args.files:
        label, _, path = spec.partition("=")
        series.setdefault(label, []).append(path)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    panels = [("output throughput", "tokens / s", lambda m: m["output_throughput"], False),
              ("time to first token, median", "ms", lambda m: m["ttft_ms"]["median"], True),
              ("inter-token latency, median", "ms", lambda m: m["itl_ms"]["median"], True)]
    loads = []
    caps = set()
    for label, paths in series.items():
        runs = load(paths)
        x = [c for c, _ in runs]
        caps.update(x)
        loads += [j.get(k, -1) for _, j in runs for k in ("load_average_start", "load_average_end")]
        for ax, (_, _, value, _) in zip(axes, panels):
            ax.plot(x, [value(j["metrics"]) for _, j in runs], "o-", label=label)
    for ax, (title, unit, _, logy) in zip(axes, panels):
        if logy:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(caps))
        ax.set_xticklabels([str(c) for c in sorted(caps)])
        ax.set_xlabel("max concurrency")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("{}  (load average {:.1f}-{:.1f})".format(args.title or "comparison", min(loads),
                                                           max(loads)))
    fig.tight_layout()
    if os.path.dirname(args.out):
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print("wrote", args.out)


def print_markdown(runs):
    print("| max conc. | prompts | achieved conc. | duration s | req/s | output tok/s | total tok/s "
          "| TTFT median / p99 ms | ITL median / p99 ms | TPOT median ms | E2E median ms "
          "| failed | load start / end | listen overflows |")
    print("|" + "---|" * 14)
    for c, j in runs:
        m = j["metrics"]
        print("| {} | {} | {:.1f} | {:.1f} | {:.2f} | {:.1f} | {:.1f} | {:.0f} / {:.0f} | "
              "{:.1f} / {:.1f} | {:.1f} | {:.0f} | {} | {:.1f} / {:.1f} | {} |".format(
                  c, j["num_prompts"], m["concurrency"], m["duration_s"],
                  m["request_throughput"], m["output_throughput"], m["total_throughput"],
                  m["ttft_ms"]["median"], m["ttft_ms"]["p99"], m["itl_ms"]["median"],
                  m["itl_ms"]["p99"], m["tpot_ms"]["median"], m["e2e_latency_ms"]["median"],
                  m["failed"], j["load_average_start"], j["load_average_end"],
                  j.get("tcp_listen_overflows", "?")))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+", help="bench_serving --output-file JSONs")
    ap.add_argument("--out", help="PNG to write")
    ap.add_argument("--markdown", action="store_true",
                    help="print a markdown table of the runs (needs no matplotlib)")
    ap.add_argument("--title", default=None, help="figure title (default: model and dataset)")
    args = ap.parse_args()

    if all("=" in f for f in args.files):
        if not args.out:
            sys.exit("comparing labelled runs needs --out")
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        plot_compare(args, plt)
        return
    runs = load(args.files)
    if args.markdown:
        print_markdown(runs)
    if not args.out:
        return
    try:
        import matplotlib
    except ImportError:
        sys.exit("plot_serving.py needs matplotlib: apt-get install python3-matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [c for c, _ in runs]
    m = [j["metrics"] for _, j in runs]
    first = runs[0][1]
    title = args.title or "{} ({}, {})".format(
        first.get("server", {}).get("model_path", "?"), first["backend"], first["dataset_name"])

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ax = axes[0]
    ax.plot(x, [r["output_throughput"] for r in m], "o-", label="output tok/s")
    ax.plot(x, [r["total_throughput"] for r in m], "s--", label="total (in + out) tok/s")
    roof = [(c, j["decode_roofline"]["decode_tps"]) for c, j in runs if j.get("decode_roofline")]
    top = max(r["total_throughput"] for r in m)
    if roof and max(t for _, t in roof) <= 3 * top:
        ax.plot([c for c, _ in roof], [t for _, t in roof], "k:",
                label="decode roofline at achieved concurrency")
    elif roof:
        # A tiny model's weights sit in cache: its roofline is orders above anything served.
        ax.text(0.02, 0.02, "decode roofline {:.0f}-{:.0f} tok/s (off scale)".format(
            min(t for _, t in roof), max(t for _, t in roof)), transform=ax.transAxes, fontsize=8)
    ax.set_ylim(bottom=0)
    ax.set_title("throughput")
    ax.set_ylabel("tokens / s")

    ax = axes[1]
    ax.plot(x, [r["ttft_ms"]["median"] for r in m], "o-", label="TTFT median")
    ax.plot(x, [r["ttft_ms"]["p99"] for r in m], "s--", label="TTFT p99")
    ax.set_yscale("log")
    ax.set_title("time to first token")
    ax.set_ylabel("ms")

    ax = axes[2]
    ax.plot(x, [r["itl_ms"]["median"] for r in m], "o-", label="ITL median")
    ax.plot(x, [r["itl_ms"]["p99"] for r in m], "s--", label="ITL p99")
    ax.plot(x, [r["tpot_ms"]["median"] for r in m], "^:", label="TPOT median")
    ax.set_yscale("log")
    ax.set_title("inter-token latency")
    ax.set_ylabel("ms")

    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(x)
        ax.set_xticklabels([str(c) for c in x])
        ax.set_xlabel("max concurrency")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    loads = [j.get(k, -1) for _, j in runs for k in ("load_average_start", "load_average_end")]
    fig.suptitle("{}  (load average {:.1f}-{:.1f})".format(title, min(loads), max(loads)))
    fig.tight_layout()
    if os.path.dirname(args.out):
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
