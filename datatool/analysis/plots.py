"""Figures as PNG files (matplotlib, no display needed).

A figure drawn again from the same numbers is not drawn again: the PNG carries, in a text
chunk, the SHA-256 of what it was drawn from (:func:`figure_key`); when the file on disk holds
the same key, it is kept as it is and matplotlib is not even imported (0.3 s, and about 0.1 s
a figure). A change to how a figure is drawn bumps ``FIGURE_FORMAT``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from datatool.core.atomic import atomic_path

FIGURE_KEY = "datatool-figure"  # the PNG text chunk with the key of what was drawn
FIGURE_FORMAT = 1


def figure_key(kind: str, *parts) -> str:
    """SHA-256 of a figure's kind and everything it is drawn from: arrays by their dtype,
    shape and bytes, anything else by its repr."""
    h = hashlib.sha256(f"{kind}|{FIGURE_FORMAT}".encode())
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(f"|{part.dtype}{part.shape}|".encode())
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(f"|{part!r}".encode())
    return h.hexdigest()


def drawn_from(path: Path, key: str) -> bool:
    """Whether ``path`` is a PNG drawn from the figure ``key`` (its header's text chunk; the
    pixels are not read)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.format == "PNG" and im.info.get(FIGURE_KEY) == key
    except (OSError, UnidentifiedImageError, ValueError):
        return False


def _save(fig, path: Path, key: str) -> None:
    """The figure to ``path`` atomically, carrying ``key``."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={FIGURE_KEY: key})


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bland_altman_png(
    path: Path, a, b, stats: dict, title: str, unit: str, labels: tuple[str, str]
) -> Path:
    """Difference (a - b) against the mean of the two, with bias and 95 % limits."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    key = figure_key("bland-altman", a, b, sorted(stats.items()), title, unit, tuple(labels))
    if drawn_from(path, key):
        return path
    plt = _pyplot()
    mean, diff = (a + b) / 2, a - b
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    ax.scatter(mean, diff, s=14, alpha=0.6, color="#1f5fa8", edgecolors="none")
    for y, style, text in (
        (stats["bias"], "-", "bias"),
        (stats["loa_high"], "--", "+1.96 SD"),
        (stats["loa_low"], "--", "-1.96 SD"),
    ):
        ax.axhline(y, color="#c0392b", linestyle=style, linewidth=1)
        ax.annotate(
            f"{text} {y:.2f}",
            xy=(1.0, y),
            xycoords=("axes fraction", "data"),
            xytext=(-4, 3),
            textcoords="offset points",
            ha="right",
            fontsize=8,
            color="#c0392b",
        )
    ax.axhline(0, color="#888888", linewidth=0.6)
    ax.set_xlabel(f"mean of {labels[0]} and {labels[1]} ({unit})")
    ax.set_ylabel(f"{labels[0]} - {labels[1]} ({unit})")
    ax.set_title(f"{title} (n = {stats['n']})")
    fig.subplots_adjust(left=0.13, right=0.97, top=0.92, bottom=0.12)  # tight_layout: slow
    _save(fig, path, key)
    plt.close(fig)
    return path


def loss_curve_png(path: Path, epochs: list[tuple[int, float, float | None]], title: str) -> Path:
    """Training and validation loss per epoch."""
    key = figure_key("loss", [tuple(e) for e in epochs], title)
    if drawn_from(path, key):
        return path
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    x = [e + 1 for e, _, _ in epochs]
    ax.plot(x, [t for _, t, _ in epochs], marker="o", markersize=3, label="training")
    if any(v is not None for _, _, v in epochs):
        ax.plot(x, [v for _, _, v in epochs], marker="o", markersize=3, label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(f"Loss per epoch, {title}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path, key)
    plt.close(fig)
    return path


def iou_box_png(path: Path, table, names: list[str]) -> Path:
    """Per-image IoU per structure: violins with a box plot inside."""
    plt = _pyplot()
    data = [table.loc[table["structure"] == n, "iou"].to_numpy() for n in names]
    keep = [(n, d) for n, d in zip(names, data) if len(d)]
    fig, ax = plt.subplots(figsize=(7.2, 4.4), dpi=110)
    if keep:
        pos = list(range(1, len(keep) + 1))
        parts = ax.violinplot([d for _, d in keep], positions=pos, showextrema=False)
        for body in parts["bodies"]:
            body.set_alpha(0.35)
        ax.boxplot([d for _, d in keep], positions=pos, widths=0.15, showfliers=True)
        ax.set_xticks(pos, [n for n, _ in keep], rotation=15)
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU per image")
    ax.set_title("IoU per structure")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def overlays_png(
    path: Path, picks: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], protocol
) -> Path:
    """Image with the reference (solid) and predicted (dashed) outlines of each structure.
    ``picks``: (title, image, reference classes, predicted classes)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(picks), figsize=(3.2 * len(picks), 3.6), dpi=110)
    axes = np.atleast_1d(axes)
    for ax, (title, image, ref, pred) in zip(axes, picks):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        for c, s in enumerate(protocol.structures, start=1):
            colour = tuple(v / 255 for v in s.color)
            for mask, style in ((ref, "solid"), (pred, "dashed")):
                if (mask == c).any():
                    ax.contour(
                        mask == c, levels=[0.5], colors=[colour], linestyles=style, linewidths=1.0
                    )
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle("reference: solid, prediction: dashed", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def outline_rgba(mask: np.ndarray, protocol, highlight: int | None = None) -> np.ndarray:
    """An RGBA overlay of each structure's outline in its protocol colour (the ``highlight``
    value's outline three pixels wide, the others one), transparent elsewhere."""
    from scipy import ndimage

    rgba = np.zeros((*mask.shape, 4), np.float32)
    for s in protocol.structures:
        binary = mask == s.value
        if not binary.any():
            continue
        inner = ndimage.binary_erosion(binary, iterations=3 if s.value == highlight else 1)
        edge = binary & ~inner
        rgba[edge] = (*(c / 255 for c in s.color), 1.0)
    return rgba


def qa_panels_png(
    path: Path,
    image: np.ndarray,
    panels: list[tuple[str, np.ndarray | None]],
    protocol,
    highlight: int | None,
    title: str,
) -> Path:
    """One image beside itself with several label maps' outlines (the flagged label, the
    model's draft, another rater's): ``panels`` are (title, label map or None)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.9), dpi=100)
    axes = np.atleast_1d(axes)
    for ax, (name, mask) in zip(axes, panels):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        if mask is not None:
            ax.imshow(outline_rgba(mask, protocol, highlight), interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.86, bottom=0.01, wspace=0.03)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
