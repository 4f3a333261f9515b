"""Flow fields as pictures: predicted vs true flow in the standard colour wheel (torchvision flow_to_image)."""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import flow_to_image

from nm_plugins.runtime.results import save_figure


def flow_grid_png(path, samples: dict, names: list | None = None, rows: int = 4) -> Path:
    """Write a PNG: one row per sample, columns frame 1, true flow, then each model's prediction.

    ``samples``: {model name: [ {img1, flow, pred, valid}, ... ]} (the same validation samples for every model,
    as returned by ``evaluate(..., keep=k)``). The flows of a row share one colour scale (the largest |flow|
    of the row), so colours compare across columns; titles give each prediction's EPE on valid pixels.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(samples) if names is None else names
    if not names or not samples[names[0]]:
        raise ValueError("flow_grid_png needs at least one model with at least one kept sample")
    rows = min(rows, *(len(samples[n]) for n in names))
    cols = 2 + len(names)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows), squeeze=False)
    for r in range(rows):
        ref = samples[names[0]][r]
        flows = torch.stack([ref["flow"]] + [samples[n][r]["pred"] for n in names]).float()
        pictures = flow_to_image(flows)  # one colour scale for the whole row
        valid = ref["valid"] if ref["valid"] is not None else torch.ones(flows.shape[-2:], dtype=torch.bool)
        panels = [((ref["img1"] + 1) / 2, "frame 1"), (pictures[0] / 255, "true flow")]
        for i, n in enumerate(names):
            epe = (samples[n][r]["pred"] - ref["flow"]).square().sum(0).sqrt()[valid].mean().item()
            panels.append((pictures[1 + i] / 255, f"{n}\nEPE {epe:.2f}"))
        for c, (img, title) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(img.clamp(0, 1).permute(1, 2, 0).numpy())
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=90)
    plt.close(fig)
    return path
