"""Makes the cube figures of the documentation with normlab.viz.

Run from the repository root (any Keras backend; the figures are the same):

    python docs/scripts/make_figures.py                  # all figures into docs/figures/
    python docs/scripts/make_figures.py --out /tmp/figs  # somewhere else
    python docs/scripts/make_figures.py cube-group-4-of-8

Each figure is an N x C x (H, W) block per norm with the elements that share
one mean and variance with the picked element (sample 0, channel 0) shaded.
The shading is not drawn by hand: `normlab.viz.shared_statistics`
differentiates the norm's output at that element with respect to the whole
input, and shades every element with a non-zero gradient.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent
DPI = 110
# The camera: C runs to the left, N to the right and the flattened H x W upward, so that
# channel 0 is the front edge and each norm's shaded block faces the reader.
VIEW = dict(elev=25, azim=-130)

# The four classic norms, as in Figure 2 of the Group Normalization paper (Wu & He, 2018).
# LayerNorm reduces over (H, W, C) there, hence axis=[1, 2, 3] (normlab's default is axis=-1).
CLASSIC = [
    ("Batch Norm", "batch"),
    ("Layer Norm", "layer(axis=[1, 2, 3])"),
    ("Instance Norm", "instance"),
    ("Group Norm (2 groups)", "group(groups=2)"),
]

# name -> (panels as (title, spec), channels); the block is batch=4 x channels x (2 x 3).
FIGURES = {
    "cube-overview": (CLASSIC, 6),
    "cube-batch": (CLASSIC[0:1], 6),
    "cube-layer": (CLASSIC[1:2], 6),
    "cube-instance": (CLASSIC[2:3], 6),
    "cube-group": (CLASSIC[3:4], 6),
    "cube-group-4-of-8": ([("channel 0's group", "group(groups=4)"),
                           ("all 4 groups of sample 0", "group(groups=4)")], 8),
}
# Panels titled this way colour every group of sample 0, each asked of the norm separately.
ALL_GROUPS = "all 4 groups of sample 0"
COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52")


def make_figure(panels, channels: int, *, batch: int = 4, height: int = 2, width: int = 3):
    """A matplotlib Figure with one cube per ``(title, spec)`` panel."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from normlab import viz

    fig = Figure(figsize=(3.1 * len(panels), 3.0))
    for i, (title, spec) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1, projection="3d")
        if title == ALL_GROUPS:
            draw_groups(ax, spec, title, batch=batch, channels=channels, height=height, width=width)
            mask_shape = (batch, channels, height * width)
        else:
            mask = viz.shared_statistics(spec, batch=batch, channels=channels, height=height, width=width)
            viz.draw_cube(ax, mask, title)
            mask_shape = mask.shape
        ax.view_init(**VIEW)
        ax.set_box_aspect(mask_shape, zoom=0.8)
    fig.subplots_adjust(left=0.02, right=0.96, bottom=0.02, top=0.9, wspace=0.05)
    return fig


def draw_groups(ax, spec, title, *, batch, channels, height, width):
    """Colours the group of every channel of sample 0, each found by ``viz.shared_statistics``."""
    import numpy as np

    from normlab import viz

    colors = np.full((batch, channels, height * width), "#F2F2F2", dtype=object)
    found = []
    for channel in range(channels):
        mask = viz.shared_statistics(spec, batch=batch, channels=channels, height=height,
                                     width=width, element=(0, channel))
        if not any((mask == g).all() for g in found):
            found.append(mask)
    if len(found) > len(COLORS):
        raise ValueError(f"{spec}: {len(found)} groups, more than the {len(COLORS)} colours")
    for mask, color in zip(found, COLORS):
        colors[mask] = color
    ax.voxels(np.ones(colors.shape, bool), facecolors=colors, edgecolors="#555555", linewidth=0.3)
    for set_label, label in ((ax.set_xlabel, "N"), (ax.set_ylabel, "C"), (ax.set_zlabel, "H, W")):
        set_label(label)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_zticks([])
    ax.set_title(title)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", choices=[[], *FIGURES], metavar="NAME",
                        help=f"figures to make (default: all): {', '.join(FIGURES)}")
    parser.add_argument("--out", type=Path, default=DOCS / "figures", help="output folder (default: docs/figures)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names or FIGURES:
        panels, channels = FIGURES[name]
        path = args.out / f"{name}.png"
        make_figure(panels, channels).savefig(path, dpi=DPI)
        print(f"{path}  ({path.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
