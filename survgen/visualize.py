"""Pictures a person can look at: image grids, frame strips of videos, labelled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from survgen.io import PNG_SOFTWARE, atomic_path


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Tensors in [-1, 1] with channels at dim -3 -> uint8 arrays with channels last."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()


def grid(rows: list[np.ndarray], labels: list[str] | None = None, pad: int = 2, label_width: int = 0) -> Image.Image:
    """Tile rows of uint8 images `(n, H, W, 3)` into one picture, with an optional label per row."""
    h, w = rows[0].shape[1:3]
    ncol = max(len(r) for r in rows)
    label_width = label_width or (max(6 * len(s) for s in labels) + 6 if labels else 0)
    canvas = Image.new("RGB", (label_width + ncol * (w + pad) + pad, len(rows) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        y = pad + r * (h + pad)
        if labels:
            draw.text((3, y + h // 2 - 5), labels[r], fill="black")
        for c, img in enumerate(row):
            canvas.paste(Image.fromarray(img), (label_width + pad + c * (w + pad), y))
    return canvas


def video_grid(videos: list[np.ndarray], labels: list[str]) -> np.ndarray:
    """Videos `(n, H, W, 3)` one under the other, labelled, as frames `(n, H', W', 3)` of even size (H.264's);
    the shortest sets the length."""
    frames = [np.asarray(grid([v[t:t + 1] for v in videos], labels)) for t in range(min(len(v) for v in videos))]
    h, w = frames[0].shape[:2]
    return np.pad(np.stack(frames), ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=255)


def save_png(image: Image.Image, path: str | Path) -> Path:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", PNG_SOFTWARE)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return Path(path)
