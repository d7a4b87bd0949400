"""Procedural renderer: one object on a plain dark background, with exact ground truth.

Drawing happens at 4x resolution and is box-filtered down, so edges are anti-aliased the way a real
image's would be. A scene is fully described by a `Scene`; the same scene always renders the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from score_erasure.toyworld import vocab

SIZE = 32
_SS = 4  # supersampling factor
_BIG = SIZE * _SS

RGB: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "yellow": (240, 220, 40),
    "green": (40, 190, 60),
    "blue": (45, 85, 235),
    "purple": (170, 55, 210),
    "white": (235, 235, 235),
}
_FLAME_OUTER = (235, 90, 0)
_FLAME_INNER = (255, 165, 30)


@dataclass(frozen=True)
class Scene:
    """Ground truth of one image: the attributes the judge must recover, and the nuisance geometry."""

    shape: str
    colour: str
    style: str
    fire: bool
    cx: float  # centre, in pixels of the 32x32 image
    cy: float
    radius: float
    angle: float  # degrees
    background: tuple[int, int, int]
    tint: tuple[int, int, int]  # per-channel colour jitter added to the object colour

    def as_dict(self) -> dict:
        return asdict(self)


def sample_scene(
    rng: np.random.Generator,
    shape: str | None = None,
    colour: str | None = None,
    style: str | None = None,
    fire: bool | None = None,
    fire_rate: float = 0.25,
) -> Scene:
    """Draw a random scene; any attribute given is fixed, the rest (and all geometry) are random."""
    shape = shape or vocab.SHAPES[rng.integers(len(vocab.SHAPES))].name
    colour = colour or vocab.COLOURS[rng.integers(len(vocab.COLOURS))].name
    style = style or vocab.STYLES[rng.integers(len(vocab.STYLES))].name
    fire = bool(rng.random() < fire_rate) if fire is None else fire
    radius = float(rng.uniform(6.5, 9.0) if fire else rng.uniform(7.0, 11.0))
    margin = radius + (4.5 if fire else 1.0)
    cx, cy = (float(rng.uniform(margin, SIZE - margin)) for _ in range(2))
    level = int(rng.integers(8, 36))
    background = tuple(int(np.clip(level + rng.integers(-5, 6), 0, 255)) for _ in range(3))
    tint = tuple(int(v) for v in rng.integers(-12, 13, size=3))
    return Scene(shape, colour, style, fire, cx, cy, radius, float(rng.uniform(-20, 20)), background, tint)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Outline of a shape as points, in supersampled pixel coordinates (y grows downwards)."""
    if shape == "circle":
        ts = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        pts = np.stack([np.cos(ts), np.sin(ts)], 1)
    elif shape == "square":
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * 0.8
    elif shape == "triangle":
        ts = np.array([-90, 30, 150]) * math.pi / 180
        pts = np.stack([np.cos(ts), np.sin(ts)], 1) * 1.1 + [0, 0.15]
    elif shape == "star":
        ts = (np.arange(10) * 36 - 90) * math.pi / 180
        rad = np.where(np.arange(10) % 2 == 0, 1.1, 0.45)
        pts = np.stack([np.cos(ts) * rad, np.sin(ts) * rad], 1) + [0, 0.08]
    elif shape == "heart":
        ts = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        x = 16 * np.sin(ts) ** 3
        y = 13 * np.cos(ts) - 5 * np.cos(2 * ts) - 2 * np.cos(3 * ts) - np.cos(4 * ts)
        pts = np.stack([x, -y - 2], 1) / 16.0
    elif shape == "cross":
        a, b = 1.0, 0.36
        pts = np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a],
                        [-b, b], [-a, b], [-a, -b], [-b, -b]])
    else:
        raise KeyError(f"unknown shape '{shape}'")
    th = angle * math.pi / 180
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    pts = pts @ rot.T * r + [cx, cy]
    return [(float(x) * _SS, float(y) * _SS) for x, y in pts]


def _mask(points: list[tuple[float, float]]) -> np.ndarray:
    img = Image.new("L", (_BIG, _BIG), 0)
    ImageDraw.Draw(img).polygon(points, fill=255)
    return np.asarray(img, dtype=np.float32) / 255.0


def _style_pattern(style: str, mask: np.ndarray) -> np.ndarray:
    """Per-pixel brightness of the object's colour (1 = full colour, low = dim), inside `mask`."""
    yy, xx = np.mgrid[0:_BIG, 0:_BIG] // _SS
    if style == "solid":
        return mask
    if style == "outlined":
        eroded = Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.MinFilter(2 * 2 * _SS + 1))
        return np.clip(mask - np.asarray(eroded, dtype=np.float32) / 255.0, 0, 1)
    if style == "striped":
        return mask * np.where((yy // 3) % 2 == 0, 1.0, 0.22)
    if style == "checkered":
        return mask * np.where(((yy // 3) + (xx // 3)) % 2 == 0, 1.0, 0.22)
    raise KeyError(f"unknown style '{style}'")


def _flames(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the outer and inner flame tongues rising from the object's top and sides."""
    outer = Image.new("L", (_BIG, _BIG), 0)
    inner = Image.new("L", (_BIG, _BIG), 0)
    n = 7
    jitter = scene.angle / 20 * 0.15  # deterministic per scene
    for k in range(n):
        t = math.pi * (0.85 + 1.3 * k / (n - 1)) + jitter  # from lower left, over the top, to lower right
        up = max(0.0, -math.sin(t))  # tongues above the object are longer, as flames rise
        length = scene.radius + 1.5 + 3.0 * up
        for img, scale, width in ((outer, 1.0, 0.45), (inner, 0.82, 0.25)):
            tip = (scene.cx + math.cos(t) * length * scale, scene.cy + math.sin(t) * length * scale)
            base = [
                (scene.cx + math.cos(t + s) * scene.radius * 0.7, scene.cy + math.sin(t + s) * scene.radius * 0.7)
                for s in (-width, width)
            ]
            ImageDraw.Draw(img).polygon([(x * _SS, y * _SS) for x, y in (base[0], tip, base[1])], fill=255)
    return np.asarray(outer, dtype=np.float32) / 255.0, np.asarray(inner, dtype=np.float32) / 255.0


def render(scene: Scene) -> np.ndarray:
    """Render a scene as a (32, 32, 3) uint8 array."""
    canvas = np.ones((_BIG, _BIG, 3), np.float32) * np.array(scene.background, np.float32)
    if scene.fire:
        outer, inner = _flames(scene)
        canvas = canvas * (1 - outer[..., None]) + outer[..., None] * np.array(_FLAME_OUTER, np.float32)
        canvas = canvas * (1 - inner[..., None]) + inner[..., None] * np.array(_FLAME_INNER, np.float32)
    mask = _mask(_polygon(scene.shape, scene.cx, scene.cy, scene.radius, scene.angle))
    colour = np.clip(np.array(RGB[scene.colour], np.float32) + np.array(scene.tint, np.float32), 0, 255)
    # Inside the object the dim parts of a pattern are a dark shade of its colour, mixed with the
    # background, so the silhouette stays whole; `outlined` has only background inside.
    background = np.array(scene.background, np.float32)
    canvas = canvas * (1 - mask[..., None]) + mask[..., None] * background  # flames stay outside the object
    pattern = _style_pattern(scene.style, mask)
    fill = colour * pattern[..., None] + (mask - pattern)[..., None] * background
    canvas = canvas * (1 - mask[..., None]) + fill
    small = canvas.reshape(SIZE, _SS, SIZE, _SS, 3).mean(axis=(1, 3))
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def part_mask(scene: Scene, part: str) -> np.ndarray:
    """Where a part of the scene is drawn, (32, 32) bool: the `object` (shape, colour, style and characters all
    live on it) or the `flames` (the object's own pixels excluded, as `render` draws them)."""
    inside = _mask(_polygon(scene.shape, scene.cx, scene.cy, scene.radius, scene.angle))
    if part == "flames":
        outer, _ = _flames(scene)
        inside = np.clip(outer - inside, 0, 1)
    elif part != "object":
        raise KeyError(f"unknown part '{part}'")
    return inside.reshape(SIZE, _SS, SIZE, _SS).mean(axis=(1, 3)) >= 0.5


def render_batch(scenes: list[Scene]) -> np.ndarray:
    """Render scenes as an (N, 32, 32, 3) uint8 array."""
    return np.stack([render(s) for s in scenes])
