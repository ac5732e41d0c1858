"""Plots people would rather look at than read: the direction-selection heatmaps, rate bar charts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches  # noqa: E402
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _grid(table: Sequence[dict], positions: Sequence[int], n_layers: int, key: str) -> np.ndarray:
    grid = np.full((len(positions), n_layers), np.nan)
    for row in table:
        value = row.get(key)
        if value is not None and math.isfinite(value):
            grid[positions.index(row["position"]), row["layer"]] = value
    return grid


def plot_selection_heatmap(selection: dict, path: Path, *, title: str = "") -> Path:
    """Layer x position heatmaps of the screening estimate, exact bypass, induce and KL scores.

    ``selection`` is :meth:`Selection.to_json`'s dict; the chosen candidate is marked with a star.
    Blank cells were not computed (filtered by layer, or not needed to decide the winner).
    """
    table = selection["table"]
    positions = sorted({row["position"] for row in table})
    n_layers = max(row["layer"] for row in table) + 1
    panels = [
        ("estimated_bypass", "bypass score, first-order estimate", "RdBu_r"),
        ("bypass", "bypass score (refusal log-odds, ablated; lower = less refusal)", "RdBu_r"),
        ("induce", "induce score (log-odds, added, harmless)", "RdBu_r"),
        ("kl", "KL on harmless under ablation (nats; a lower bound where the filter stopped early)", "viridis"),
    ]
    panels = [p for p in panels if not np.isnan(_grid(table, positions, n_layers, p[0])).all()]
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6, n_layers * 0.45), 1.6 + 1.3 * len(panels) * max(1, len(positions) / 4)), squeeze=False)
    chosen = (positions.index(selection["position"]), selection["layer"])
    for ax, (key, label, cmap) in zip(axes[:, 0], panels):
        grid = _grid(table, positions, n_layers, key)
        if cmap == "RdBu_r":
            center = selection.get("baseline_refusal_score_harmful", 0.0) if "bypass" in key else 0.0
            span = np.nanmax(np.abs(grid - center)) if not np.isnan(grid).all() else 1.0
            image = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=center - span, vmax=center + span)
        else:
            image = ax.imshow(grid, aspect="auto", cmap=cmap)
        ax.plot(chosen[1], chosen[0], marker="*", color="gold", markersize=14, markeredgecolor="black")
        ax.set_yticks(range(len(positions)), [str(p) for p in positions])
        ax.set_ylabel("position")
        ax.set_title(label, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.025, pad=0.01)
    axes[-1, 0].set_xlabel("layer (resid_pre)")
    fig.suptitle(title or f"refusal direction selection: chosen resid_pre.{selection['layer']} at position {selection['position']}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_rates(rows: Sequence[dict], path: Path, *, title: str = "") -> Path:
    """Bar chart of rates with 95% CI error bars; each row has ``label``, ``value``, ``lo``, ``hi``, ``n``."""
    fig, ax = plt.subplots(figsize=(max(5, len(rows) * 1.1), 3.2))
    values = [r["value"] * 100 for r in rows]
    lower = [(r["value"] - r["lo"]) * 100 for r in rows]
    upper = [(r["hi"] - r["value"]) * 100 for r in rows]
    colors = [r.get("color", "tab:blue") for r in rows]
    ax.bar(range(len(rows)), values, yerr=[lower, upper], capsize=4, color=colors)
    ax.set_xticks(range(len(rows)), [f"{r['label']}\n(n={r['n']})" for r in rows], fontsize=8)
    ax.set_ylabel("refusal rate (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_steerer_comparison(rows: Sequence[dict], path: Path, *, title: str = "") -> Path:
    """One row per steerer: harmful and harmless refusal side by side (left) and the harmless KL it costs (right).

    Each row has ``name`` and optional ``harmful`` / ``harmless`` / ``kl`` dicts with ``value``, ``lo``, ``hi``
    (rates also ``n``); a missing one leaves its bar out. Reading down the rows shows effect and cost together.
    """
    height = 0.38
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 1.0 + 0.42 * len(rows)), sharey=True, gridspec_kw={"width_ratios": [3, 2]})
    y = np.arange(len(rows))
    for offset, cls, color in ((-height / 2, "harmful", "tab:red"), (height / 2, "harmless", "tab:green")):
        for i, row in enumerate(rows):
            r = row.get(cls)
            if r is None:
                continue
            left.barh(y[i] + offset, r["value"] * 100, height, color=color,
                      xerr=[[(r["value"] - r["lo"]) * 100], [(r["hi"] - r["value"]) * 100]], capsize=2, error_kw={"lw": 0.8})
    handles = [matplotlib.patches.Patch(color="tab:red", label="harmful prompts"), matplotlib.patches.Patch(color="tab:green", label="harmless prompts")]
    left.set_xlim(0, 105)
    left.set_xlabel("refusal rate (%, 95% CI)")
    left.legend(handles=handles, fontsize=7, loc="upper right")
    left.set_yticks(y, [f"{row['name']} (n={(row.get('harmful') or row.get('harmless') or {}).get('n', '?')})" for row in rows], fontsize=8)
    left.invert_yaxis()
    for i, row in enumerate(rows):
        kl = row.get("kl")
        if kl is not None:
            right.barh(y[i], kl["value"], 0.5, color="tab:purple", xerr=[[kl["value"] - kl["lo"]], [kl["hi"] - kl["value"]]], capsize=2,
                       error_kw={"lw": 0.8})
            right.text(kl["hi"], y[i], f" {kl['value']:.3f}", va="center", fontsize=7)
    right.set_xscale("symlog", linthresh=0.1)
    right.set_xlabel("harmless KL (nats, 95% CI; symlog)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_probe_accuracy(rows: Sequence[dict], path: Path, *, title: str = "") -> Path:
    """Out-of-distribution accuracy of probes against layer, with 95% CI bands.

    Each row has ``kind`` (``dense``, ``latents``, ``random_latents``), ``layer`` (``None`` for probes that span
    several layers, drawn as horizontal lines) and ``ood_accuracy`` as ``{"value", "lo", "hi", "n"}``.
    """
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    dense = sorted((r for r in rows if r["kind"] == "dense"), key=lambda r: r["layer"])
    layers = [r["layer"] for r in dense]
    if dense:
        acc = np.array([[r["ood_accuracy"]["value"], r["ood_accuracy"]["lo"], r["ood_accuracy"]["hi"]] for r in dense]) * 100
        ax.plot(layers, acc[:, 0], marker="o", color="tab:blue", label="dense residual (per layer)")
        ax.fill_between(layers, acc[:, 1], acc[:, 2], color="tab:blue", alpha=0.15)
    span = (min(layers) - 0.5, max(layers) + 0.5) if layers else (0.0, 1.0)
    styles = {"latents": ("tab:red", "refusal latents"), "random_latents": ("tab:gray", "random latents (control)")}
    for row in rows:
        if row["kind"] not in styles:
            continue
        color, label = styles[row["kind"]]
        a = row["ood_accuracy"]
        ax.hlines(a["value"] * 100, *span, color=color, label=f"{label}, k={row.get('n_features', '?')}")
        ax.fill_between(span, a["lo"] * 100, a["hi"] * 100, color=color, alpha=0.12)
    n = next((r["ood_accuracy"]["n"] for r in rows), 0)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("layer (resid_pre, last prompt token)")
    ax.set_ylabel(f"OOD accuracy (%, n={n})")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title or "probes on jailbreak-wrapped prompts (label: the model refused)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
