"""`kinema eval report`: one self-contained HTML file (plots and images inlined as base64) with loss curves
from training logs, adherence by category, and the latest sample sheets."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Lay out, write and close a figure."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    pyplot().close(fig)
    return path


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _img(data: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def loss_plot(runs: list[Path]) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for run in runs:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        last = {r["step"]: r["loss"] for r in rows}  # a resumed run may log a step twice: keep the last
        ax.plot(list(last), list(last.values()), label=run.name)
    ax.set(xlabel="step", ylabel="training loss", yscale="log", title="training loss")
    ax.legend()
    data = _png(fig)
    plt.close(fig)
    return _img(data, "loss curves")


def adherence_plot(results: dict[str, dict]) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / max(1, len(results))
    for i, (name, r) in enumerate(results.items()):
        cats = list(r["by_category"])
        ax.bar([k + i * width for k in range(len(cats))], [100 * r["by_category"][c]["all_correct"] for c in cats],
               width, label=name)
        ax.set_xticks([k + width * (len(results) - 1) / 2 for k in range(len(cats))], cats)
    ax.set(ylabel="all attributes correct (%)", ylim=(0, 100), title="prompt adherence by category")
    ax.legend()
    data = _png(fig)
    plt.close(fig)
    return _img(data, "adherence")


def adherence_table(by_category: dict[str, dict]) -> str:
    """Categories as rows; n, all-correct, each attribute and temporal consistency as columns ('-' where a
    category's prompts never state the attribute)."""
    attrs = sorted({a for m in by_category.values() for a in m} - {"n", "all_correct", "temporal_consistency"})
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["category", "n", "all correct", *attrs, "temporal"])
    rows = []
    for cat, m in by_category.items():
        cells = [html.escape(cat), f"{m['n']:.0f}", f"<b>{m['all_correct']:.0%}</b>",
                 *(f"{m[a]:.0%}" if a in m and m[a] == m[a] else "-" for a in attrs),
                 f"{m.get('temporal_consistency', float('nan')):.3f}"]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    style = "border-collapse:collapse;text-align:right' border=1 cellpadding=4"
    return f"<table style='{style}><tr>{head}</tr>{''.join(rows)}</table>"


def write_report(out: str | Path, runs: list[str] = (), adherence: list[str] = ()) -> Path:
    from kinema.io.video import atomic_write_bytes

    parts = ["<!doctype html><meta charset=utf-8><title>kinema report</title>",
             "<body style='font-family:sans-serif;max-width:1100px;margin:auto'><h1>kinema report</h1>"]
    run_dirs = [Path(r) for r in runs if (Path(r) / "metrics.jsonl").exists()]
    if run_dirs:
        parts += ["<h2>Training</h2>", loss_plot(run_dirs)]
    results = {Path(a).name: json.loads((Path(a) / "adherence.json").read_text()) for a in adherence}
    if results:
        parts += ["<h2>Prompt adherence</h2>", adherence_plot(results)]
        for name, r in results.items():
            parts += [f"<h3>{html.escape(name)}</h3>", adherence_table(r["by_category"]),
                      f"<p>Fréchet distance (probe features): {r['frechet']:.3f} (real vs real "
                      f"{r['frechet_real_vs_real']:.3f})</p>"]
            fail = Path(adherence[list(results).index(name)]) / "failures.png"
            if fail.exists():
                parts.append(_img(base64.b64encode(fail.read_bytes()).decode(), "failures"))
    for run in run_dirs:
        sheets = sorted((run / "samples").glob("*.png"))
        if sheets:
            parts += [f"<h2>Samples: {html.escape(run.name)} ({sheets[-1].stem})</h2>",
                      _img(base64.b64encode(sheets[-1].read_bytes()).decode(), sheets[-1].stem)]
    atomic_write_bytes(out, "\n".join(parts).encode())
    return Path(out)
