"""The ShapesWorld detector: objects read from pixels alone.

Foreground = pixels far from the background colour; objects = 8-connected foreground components; colour =
the palette colour nearest to the component's median pixel; class = the shape template (drawn to fill the
component's bounding box) with the best IoU, which is also the detection's confidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from ...data.shapes.geometry import template_mask
from ...data.shapes.rules import Detection
from ...data.shapes.world import PALETTE, SHAPES

_PALETTE_NAMES = list(PALETTE)
_PALETTE_RGB = np.array([PALETTE[c] for c in _PALETTE_NAMES], dtype=np.float32)
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class DetectorConfig:
    background: tuple[int, int, int] = (0, 0, 0)
    # A pixel is foreground when some channel differs from the background by more than this.
    foreground_threshold: int = 60
    # Components smaller than this many pixels are noise (the smallest object at 64 px covers ~100).
    min_area: int = 20
    # A component whose best template IoU is below this is no recognisable shape: it is reported as a blob,
    # never as a detection (GenEval's detector likewise drops low-confidence boxes).
    min_confidence: float = 0.6
    # ShapesWorld objects are flat-coloured: at least this share of a component's pixels must be nearest to
    # its palette colour, or it is a blob (random noise forms one big component of every colour).
    min_color_purity: float = 0.5


@dataclass(frozen=True)
class Blob:
    """A foreground component that matched no shape well enough."""

    box: tuple[int, int, int, int]
    area: int
    best_shape: str
    confidence: float


def _nearest_color(pixels: np.ndarray) -> tuple[str, float]:
    """The palette colour nearest the median pixel, and the share of pixels nearest to that same colour."""
    pixels = pixels.astype(np.float32)
    median = np.median(pixels, axis=0)
    index = int(np.argmin(((_PALETTE_RGB - median) ** 2).sum(axis=1)))
    per_pixel = np.argmin(((pixels[:, None, :] - _PALETTE_RGB[None]) ** 2).sum(axis=2), axis=1)
    return _PALETTE_NAMES[index], float((per_pixel == index).mean())


def _classify(component: np.ndarray) -> tuple[str, float]:
    height, width = component.shape
    area = component.sum()
    best, best_iou = SHAPES[0], -1.0
    for shape in SHAPES:
        template = template_mask(shape, width, height)
        inter = np.logical_and(component, template).sum()
        iou = inter / (area + template.sum() - inter)
        if iou > best_iou:
            best, best_iou = shape, float(iou)
    return best, best_iou


def _foreground(image: Image.Image | np.ndarray, config: DetectorConfig) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) RGB pixels and the (H, W) mask of those far from the background colour."""
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {pixels.shape}")
    difference = np.abs(pixels.astype(np.int16) - np.array(config.background, dtype=np.int16)).max(axis=2)
    return pixels, difference > config.foreground_threshold


def detect(image: Image.Image | np.ndarray, config: DetectorConfig | None = None) -> tuple[list[Detection], list[Blob]]:
    """Detections (recognised shapes) and blobs (unrecognised components) of one RGB image."""
    config = config or DetectorConfig()
    pixels, foreground = _foreground(image, config)
    labels, _ = ndimage.label(foreground, structure=_EIGHT_CONNECTED)
    detections, blobs = [], []
    for index, slices in enumerate(ndimage.find_objects(labels), start=1):
        if slices is None:
            continue
        component = labels[slices] == index
        area = int(component.sum())
        if area < config.min_area:
            continue
        rows, cols = slices
        box = (cols.start, rows.start, cols.stop, rows.stop)
        shape, confidence = _classify(component)
        if confidence < config.min_confidence:
            blobs.append(Blob(box, area, shape, confidence))
            continue
        color, purity = _nearest_color(pixels[slices][component])
        if purity < config.min_color_purity:
            blobs.append(Blob(box, area, shape, confidence))
            continue
        detections.append(Detection(shape=shape, color=color, box=box, confidence=confidence))
    return detections, blobs


def foreground_colour(image: Image.Image | np.ndarray, config: DetectorConfig | None = None) -> str | None:
    """The palette colour nearest the median foreground pixel of an RGB image (None: no foreground).

    What colour an image is drawn in, whatever its shapes: a check of colour words that a blob still passes, where
    `detect` needs a recognisable shape first."""
    config = config or DetectorConfig()
    pixels, foreground = _foreground(image, config)
    drawn = pixels[foreground]
    return _nearest_color(drawn)[0] if len(drawn) >= config.min_area else None
