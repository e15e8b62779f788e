"""Bytes of the images and meshes that pass between stages: the one place they are encoded and
decoded, for the store (the I/O manager), the GPU worker's wire (as base64) and the CLI. No Dagster.

PNG is written with Pillow's defaults (zlib level 6, no optimize pass), so identical pixels are
identical bytes and the content-addressed store de-duplicates them; GLB by trimesh.
"""

from __future__ import annotations

import base64
import io

import trimesh
from PIL import Image

from . import images


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def png_image(data: bytes) -> Image.Image:
    """A PNG this process or the worker wrote, exactly as encoded (mode kept: an RGBA cut-out stays RGBA)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def stored_image(data: bytes) -> Image.Image:
    """A stored PNG or an image prompt (bounded when it was registered) as 8-bit RGB, or RGBA when it
    has transparency: 16-bit greyscale scaled, palettes and colour keys kept (``images.to_rgb``)."""
    return images.to_rgb(images.decode(data, max_pixels=None))


def glb_bytes(mesh: trimesh.Trimesh) -> bytes:
    return mesh.export(file_type="glb")


def glb_mesh(data: bytes) -> trimesh.Trimesh:
    return trimesh.load(io.BytesIO(data), file_type="glb", force="mesh", process=False)


def mesh_ply_bytes(mesh: trimesh.Trimesh) -> bytes:
    return mesh.export(file_type="ply")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    """Strict base64 (binascii.Error on anything else)."""
    return base64.b64decode(text, validate=True)
