"""The embedded text-to-image stand-in: a procedural renderer, not a learned model.

It reads shape and colour words from the prompt ("red cube", "wooden chair", "blue ball"),
builds the object as a signed distance field, sphere-traces it with numpy and shades it
(Lambert + ambient + a soft rim) on a white background, centred, as a FLUX prompt
template would ask. The seed varies the view, proportions and hue slightly. The same
(prompt, seed) always gives the same image. Words it does not know pick a shape and a
colour from the prompt's hash.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from .gpu import BackendError
from .stages import TextToImage, report_progress

Sdf = Callable[[np.ndarray], np.ndarray]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40), "green": (50, 160, 70), "blue": (45, 85, 200), "yellow": (235, 200, 40),
    "orange": (240, 130, 30), "purple": (130, 60, 170), "violet": (140, 90, 200), "pink": (235, 120, 170),
    "black": (35, 35, 40), "white": (235, 235, 230), "grey": (128, 128, 132), "gray": (128, 128, 132),
    "brown": (120, 75, 40), "wooden": (150, 100, 55), "wood": (150, 100, 55), "golden": (212, 170, 55),
    "gold": (212, 170, 55), "silver": (190, 192, 200), "metal": (160, 165, 175), "cyan": (40, 180, 200),
    "teal": (30, 130, 130), "beige": (215, 195, 160), "stone": (140, 135, 125), "glass": (170, 210, 220),
}


def _box(half: tuple[float, float, float], centre: tuple[float, float, float] = (0, 0, 0),
         round_: float = 0.02) -> Sdf:
    h, c = np.array(half, np.float32) - round_, np.array(centre, np.float32)

    def sdf(p: np.ndarray) -> np.ndarray:
        q = np.abs(p - c) - h
        return np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0) - round_
    return sdf


def _sphere(r: float) -> Sdf:
    return lambda p: np.linalg.norm(p, axis=1) - r


def _cylinder(r: float, h: float) -> Sdf:
    def sdf(p: np.ndarray) -> np.ndarray:
        d = np.stack([np.hypot(p[:, 0], p[:, 2]) - r, np.abs(p[:, 1]) - h], axis=1)
        return np.minimum(d.max(axis=1), 0) + np.linalg.norm(np.maximum(d, 0), axis=1)
    return sdf


def _cone(r: float, h: float) -> Sdf:
    slope = r / (2 * h)

    def sdf(p: np.ndarray) -> np.ndarray:
        radius = slope * (h - p[:, 1])  # r at the base (y = -h), 0 at the apex (y = +h)
        side = (np.hypot(p[:, 0], p[:, 2]) - radius) / np.sqrt(1 + slope**2)
        return np.maximum(side, np.abs(p[:, 1]) - h)
    return sdf


def _torus(major: float, minor: float) -> Sdf:
    return lambda p: np.hypot(np.hypot(p[:, 0], p[:, 2]) - major, p[:, 1]) - minor


def _union(*parts: Sdf) -> Sdf:
    return lambda p: np.min(np.stack([part(p) for part in parts]), axis=0)


def _chair(w: float) -> Sdf:
    legs = [_box((0.05, 0.3, 0.05), (x * (w - 0.07), -0.45, z * 0.33)) for x in (-1, 1) for z in (-1, 1)]
    return _union(_box((w, 0.05, 0.4), (0, -0.12, 0)), _box((w, 0.38, 0.05), (0, 0.3, -0.36)), *legs)


def _table(w: float) -> Sdf:
    legs = [_box((0.05, 0.35, 0.05), (x * (w - 0.1), -0.3, z * 0.45)) for x in (-1, 1) for z in (-1, 1)]
    return _union(_box((w, 0.05, 0.55), (0, 0.08, 0)), *legs)


SHAPES: dict[str, Callable[[float], Sdf]] = {
    "sphere": lambda s: _sphere(0.6 * s),
    "cube": lambda s: _box((0.5 * s, 0.5 * s, 0.5 * s), round_=0.04),
    "cylinder": lambda s: _cylinder(0.4 * s, 0.6),
    "cone": lambda s: _cone(0.55 * s, 0.6),
    "torus": lambda s: _torus(0.5 * s, 0.18),
    "chair": lambda s: _chair(0.4 * s),
    "table": lambda s: _table(0.65 * s),
}
SHAPE_WORDS = {
    "sphere": "sphere ball orb globe planet apple marble bubble head egg",  # "orange" is a colour
    "cube": "cube box crate block dice die brick chest cabinet house",
    "cylinder": "cylinder can cup mug vase bottle jar barrel pillar tower candle drum",
    "cone": "cone hat tree pyramid spike horn funnel lamp",
    "torus": "torus donut doughnut ring tire tyre wheel bagel",
    "chair": "chair throne seat stool bench armchair",
    "table": "table desk counter workbench",
}
_WORD_TO_SHAPE = {w: shape for shape, words in SHAPE_WORDS.items() for w in words.split()}


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: tuple[int, int, int]
    azimuth: float
    elevation: float
    size: float


def scene_for(prompt: str, seed: int) -> Scene:
    """What the prompt and seed ask for: the first known shape and colour words, or hash picks."""
    words = re.findall(r"[a-z]+", prompt.lower())
    digest = hashlib.sha256(f"{prompt}\x00{seed}".encode()).digest()
    prompt_hash = hashlib.sha256(prompt.encode()).digest()
    shape = next((_WORD_TO_SHAPE[w] for w in words if w in _WORD_TO_SHAPE), None)
    shape = shape or sorted(SHAPES)[prompt_hash[0] % len(SHAPES)]
    colour = next((COLOURS[w] for w in words if w in COLOURS), None)
    if colour is None:
        hue = prompt_hash[1] / 255
        colour = tuple(int(c) for c in 60 + 160 * (0.5 + 0.5 * np.cos(2 * np.pi * (hue + np.array([0, 1, 2]) / 3))))
    jitter = (np.frombuffer(digest[:6], np.uint8).astype(np.float64) / 255 - 0.5) * 2  # in [-1, 1]
    colour = tuple(int(np.clip(c * (1 + 0.08 * jitter[3 + i]), 0, 255)) for i, c in enumerate(colour))
    return Scene(shape, colour, azimuth=35 + 20 * jitter[0], elevation=20 + 8 * jitter[1], size=1 + 0.1 * jitter[2])


def render_prompt(prompt: str, seed: int, size: int = 512) -> Image.Image:
    """An RGB image of the prompt's object, centred on white."""
    return render_scene(scene_for(prompt, seed), size)


def render_scene(scene: Scene, size: int = 512, fov_deg: float = 40.0, distance: float = 3.2) -> Image.Image:
    sdf = SHAPES[scene.shape](scene.size)
    az, el = np.radians(scene.azimuth), np.radians(scene.elevation)
    eye = distance * np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
    forward = -eye / np.linalg.norm(eye)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)

    f = np.tan(np.radians(fov_deg) / 2)
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    u, v = (u + 0.5) / size * 2 - 1, 1 - (v + 0.5) / size * 2
    rays = (forward + f * (u.reshape(-1, 1) * right + v.reshape(-1, 1) * up))
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)

    depth, hit = _sphere_trace(sdf, eye, rays)
    image = np.full((size * size, 3), 255.0)
    if hit.any():
        points = eye + rays[hit] * depth[hit, None]
        normal = _normals(sdf, points)
        light = np.array([0.45, 0.8, 0.4]) / np.linalg.norm([0.45, 0.8, 0.4])
        lambert = np.clip(normal @ light, 0, 1)
        rim = (1 - np.abs(np.sum(normal * -rays[hit], axis=1))) ** 3
        shade = 0.35 + 0.6 * lambert + 0.15 * rim
        image[hit] = np.clip(np.array(scene.colour) * shade[:, None], 0, 255)
    return _centre(image.reshape(size, size, 3).astype(np.uint8), hit.reshape(size, size))


def _centre(image: np.ndarray, mask: np.ndarray, fill: float = 0.82) -> Image.Image:
    """Crop to the object and place it centred, its longer side ``fill`` of the frame."""
    size = image.shape[0]
    if not mask.any():
        return Image.fromarray(image, "RGB")
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    crop = Image.fromarray(image[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1], "RGB")
    scale = fill * size / max(crop.size)
    crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))), Image.LANCZOS)
    out = Image.new("RGB", (size, size), (255, 255, 255))
    out.paste(crop, ((size - crop.width) // 2, (size - crop.height) // 2))
    return out


def _sphere_trace(sdf: Sdf, eye: np.ndarray, rays: np.ndarray, steps: int = 96,
                  far: float = 6.0, eps: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    depth = np.zeros(len(rays))
    hit = np.zeros(len(rays), bool)
    active = np.arange(len(rays))
    for _ in range(steps):
        dist = sdf(eye + rays[active] * depth[active, None])
        depth[active] += dist
        done = dist < eps
        hit[active[done]] = True
        active = active[~done & (depth[active] < far)]
        report_progress(len(rays) - active.size, len(rays), "rays traced")
        if active.size == 0:
            break
    if active.size:  # the rest never converged within ``steps``: traced all the same
        report_progress(len(rays), len(rays), "rays traced")
    return depth, hit


def _normals(sdf: Sdf, p: np.ndarray, h: float = 1e-3) -> np.ndarray:
    offsets = np.eye(3) * h
    grad = np.stack([sdf(p + o) - sdf(p - o) for o in offsets], axis=1)
    return grad / np.maximum(np.linalg.norm(grad, axis=1, keepdims=True), 1e-12)


class Procedural(TextToImage):
    """The ``text_to_image`` backend ``procedural``."""

    name, model = "procedural", "procedural SDF renderer (not a learned model)"

    def __init__(self, size: int = 512) -> None:
        if not 64 <= size <= 2048:
            raise BackendError(f"procedural size {size}: use 64 to 2048 pixels")
        self.size = size

    def __call__(self, prompt: str, seed: int) -> Image.Image:
        return render_prompt(prompt, seed, self.size)
