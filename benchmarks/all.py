"""Regenerates every benchmark: docs/benchmarks.md, docs/benchmarks.json, docs/figures/*.png.

    python -m benchmarks.all --quick     # a few minutes: fewer rounds, smaller timed nets
    python -m benchmarks.all             # full mode (see FULL_MODE_NOTE)
    python -m benchmarks.all --only layers,models --output-dir /tmp/out

Sections are modules with `run(quick, output_dir) -> dict` returning
{"title", "markdown", "figures" (PNG paths), "data" (JSON-able)}; a listed
module that does not exist (e.g. `benchmarks.quality` before it is written)
is skipped. On a machine with a GPU the layer and model benchmarks run there
(TensorFlow's default placement) and the device is recorded; `--cpu` hides
the GPU to record the CPU figures too.
"""

import argparse
import importlib
import json
import os
import shlex
import shutil
import sys
import time
import traceback
from pathlib import Path

# (name, module, title): the order of docs/benchmarks.md.
SECTIONS = (
    ("layers", "benchmarks.layers", "Layer cost"),
    ("backend_layers", "benchmarks.backend_layers", "Layer cost on JAX and PyTorch"),
    ("models", "benchmarks.models", "Model cost"),
    ("serving", "benchmarks.serving", "Serving cost on every backend"),
    ("quality", "benchmarks.quality", "Quality"),
    ("ensemble_gap", "benchmarks.ensemble_gap", "Ensemble gap"),
)
FULL_MODE_NOTE = (
    "Full mode (`python -m benchmarks.all`): 100 timed rounds per layer case (10 warm-up); parameter "
    "counts of every method on the three networks, the deep ensembles built and checked; throughput and "
    "memory of WRN-28-2 at B = 16 with 30 rounds (3 warm-up); quality on four data sets (digits, "
    "JapaneseVowels, ItalyPowerDemand, GunPoint); the ensemble gap on Fashion-MNIST read from "
    "docs/ensemble_gap.json, not retrained (`python -m benchmarks.ensemble_gap` trains it: its 84 "
    "fmnist_10k and 36 fmnist_5k runs spend 1.9 and 0.7 hours training on 2 cores, evaluation aside). On 2 cores (2026-12-08) the full mode took 18.0 minutes, "
    "`--only layers,backend_layers,models,serving` 9.0 of them (serving on TensorFlow, JAX and PyTorch: 2.5). Quick mode (`--quick`, 11.2 minutes on 2026-11-25): 15 rounds "
    "per layer case, the big networks counted for deterministic / ensemble / BatchEnsemble / rank-1 only, "
    "WRN-16-2 at B = 8 with 5 rounds, quality on digits and JapaneseVowels at half the epochs. "
    "On a GPU the layer batches are 16× larger and the timed network is WRN-28-10 at B = 32. "
    "`--single-thread` runs TensorFlow on one thread and reports process CPU time: use it on a shared, "
    "loaded machine, where wall-clock ratios are noise."
)


def _normalise(result, title):
    """Accepts a section's dict; tolerates other key names for markdown and figures."""
    if not isinstance(result, dict):
        return {"title": title, "markdown": str(result), "figures": [], "data": {}}
    markdown = result.get("markdown")
    if markdown is None:
        tables = result.get("tables", [])
        tables = tables.values() if isinstance(tables, dict) else tables
        markdown = "\n\n".join(str(t) for t in tables)
    figures = None
    for key in ("figures", "pngs", "plots", "figure_paths"):
        if key in result:
            figures = result[key]
            break
    figures = list(figures.values()) if isinstance(figures, dict) else list(figures or [])
    data = result.get("data")
    if data is None:
        known = ("markdown", "tables", "figures", "pngs", "plots", "figure_paths")
        data = {k: v for k, v in result.items() if k not in known}
    figures = [str(f) for f in figures]
    return {"title": result.get("title", title), "markdown": markdown, "figures": figures, "data": data}


def _link_missing_figures(section, output_dir):
    """Appends image links for figures the section's markdown does not show.

    A figure outside `output_dir` (a section that reads another command's
    output) is copied into its figures/ folder, so the page's links stay
    relative and the folder can be moved (e.g. copied into docs/).
    """
    lines = [section["markdown"].rstrip()]
    for figure in section["figures"]:
        path = Path(figure)
        if path.name in section["markdown"]:
            continue
        try:
            relative = path.resolve().relative_to(Path(output_dir).resolve()).as_posix()
        except ValueError:
            copy = Path(output_dir) / "figures" / path.name
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, copy)
            relative = f"figures/{path.name}"
        lines += ["", f"![{path.stem}]({relative})"]
    return "\n".join(lines) + "\n"


def run_sections(names, quick, output_dir, log):
    sections = []
    for name, module_name, title in SECTIONS:
        if names and name not in names:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:
                log(f"all: {module_name} does not exist; section skipped")
                continue
            raise
        log(f"all: section {name} ({'quick' if quick else 'full'})")
        started = time.perf_counter()
        try:
            section = _normalise(module.run(quick=quick, output_dir=output_dir), title)
            section["status"] = "ok"
        except Exception:  # noqa: BLE001 - the other sections still run; the exit code says it
            error = traceback.format_exc()
            log(error)
            markdown = f"**This section failed:**\n\n```\n{error[-3000:]}\n```"
            section = {"title": title, "markdown": markdown, "figures": [], "data": {}}
            section["status"] = "failed"
        section["name"] = name
        section["seconds"] = time.perf_counter() - started
        sections.append(section)
    return sections


def write_report(sections, header, output_dir):
    from benchmarks import common

    minutes = header["total_seconds"] / 60
    lines = [
        "# Benchmarks",
        "",
        "Generated by `benchmarks/` — do not edit by hand; regenerate with the command below.",
        "",
        f"- Date: {header['date']}",
        f"- Command: `{header['command']}`",
        f"- Mode: {header['mode']}",
        f"- Device: {header['device_line']}",
        f"- Timings: {header['device']['timing']}",
        f"- Physical devices: {', '.join(header['device']['physical_devices'])}",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in header['device']['versions'].items())}",
        (
            f"- Load average (1, 5, 15 min) at start: {header['device']['load_average_at_start']}, "
            f"at end: {header['load_average_at_end']}"
        ),
        f"- Total run time: {minutes:.1f} min ("
        + ", ".join(f"{s['name']} {s['seconds'] / 60:.1f} min" for s in sections)
        + ")",
        "",
        FULL_MODE_NOTE,
        "",
        (
            "Timings are medians of interleaved repetitions in one run (see `benchmarks/common.py`); "
            "on a shared or loaded machine only the ratios measured within one run are meaningful."
        ),
        "",
    ]
    for section in sections:
        lines += [f"## {section['title']}", "", _link_missing_figures(section, output_dir)]
    markdown_path = Path(output_dir) / "benchmarks.md"
    markdown_path.write_text("\n".join(lines))
    json_path = Path(output_dir) / "benchmarks.json"
    payload = dict(header, sections={s["name"]: {k: v for k, v in s.items() if k != "markdown"} for s in sections})
    json_path.write_text(json.dumps(payload, indent=1, default=str))
    common.log(f"all: wrote {markdown_path} and {json_path}")
    return markdown_path, json_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few minutes instead of the full run")
    parser.add_argument("--only", default="", help="comma-separated sections: " + ",".join(n for n, _, _ in SECTIONS))
    parser.add_argument("--output-dir", default=None, help="default: docs/ of the repository")
    parser.add_argument("--cpu", action="store_true", help="hide any GPU (CUDA_VISIBLE_DEVICES=-1)")
    parser.add_argument(
        "--single-thread",
        action="store_true",
        help="TensorFlow on one thread, timings in process CPU time: for a loaded, shared machine",
    )
    args = parser.parse_args(argv)
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"  # before TensorFlow is imported; workers inherit it
    if args.single_thread:
        os.environ["BENCH_SINGLE_THREAD"] = "1"  # workers inherit it

    from benchmarks import common

    output_dir = Path(args.output_dir) if args.output_dir else common.DOCS_DIR
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    device = common.device_info()
    common.log(f"all: {common.describe_device(device)}")
    names = [n for n in args.only.split(",") if n]
    sections = run_sections(names, args.quick, output_dir, common.log)
    try:
        load_end = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load_end = None
    header = {
        "date": common.timestamp(),
        "command": " ".join(
            ["python -m benchmarks.all"] + [shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])]
        ),
        "mode": "quick" if args.quick else "full",
        "device": device,
        "device_line": common.describe_device(device),
        "load_average_at_end": load_end,
        "total_seconds": time.perf_counter() - started,
    }
    write_report(sections, header, output_dir)
    for section in sections:
        print(f"\n## {section['title']}\n\n{section['markdown']}")
    print(f"\nTotal run time: {header['total_seconds'] / 60:.1f} min")
    failed = [s["name"] for s in sections if s["status"] != "ok"]
    if failed:
        common.log(f"all: failed sections: {failed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
