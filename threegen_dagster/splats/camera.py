"""Cameras for the CPU splat renderer, and the SN17 validator's ring. Pure numpy.

Cameras
-------
World space is right-handed with **+Y up**. A camera orbits a target at
``(azimuth, elevation, radius)``::

    position = target + r * (cos(el) * sin(az), sin(el), cos(el) * cos(az))

so azimuth 0 puts the camera on +Z looking toward -Z, with world +X to the right of
the image and +Y up (the usual OpenGL view); azimuth grows counter-clockwise seen
from above (azimuth 90 sits on +X). This is the SN17 validator's ring: 16 views
evenly spaced over [0, 360), elevation 15 degrees, radius 2.5, vertical FOV 49.1
degrees, white background, DC colour only (``validator_cameras``).

Internally a camera holds a world-to-camera rotation whose rows are the camera's
right, down and forward axes (the OpenCV / original 3DGS view space: x right,
y down, z forward). A point at camera coordinates ``(x, y, z)`` lands at pixel
``(u, v) = (f x / z + W / 2, f y / z + H / 2)`` with ``f = H / (2 tan(fov_y / 2))``
(square pixels; the FOV is vertical, so wide images see more horizontally). Pixel
``(row i, column j)`` has its centre at ``(u, v) = (j + 0.5, i + 0.5)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]

VALIDATOR_VIEWS = 16
VALIDATOR_ELEVATION_DEG = 15.0
VALIDATOR_RADIUS = 2.5
VALIDATOR_FOV_Y_DEG = 49.1
VALIDATOR_RESOLUTION = 518


# --------------------------------------------------------------------------- cameras


@dataclass(frozen=True, eq=False)
class Camera:
    """A pinhole camera: world position, world-to-camera rotation and vertical FOV."""

    position: F64
    """(3,) camera centre in world coordinates."""
    rotation: F64
    """(3, 3) world-to-camera rotation; rows are the camera's right, down and forward axes."""
    fov_y_deg: float
    """Vertical field of view in degrees."""

    @property
    def right(self) -> F64:
        return self.rotation[0]

    @property
    def up(self) -> F64:
        return -self.rotation[1]

    @property
    def forward(self) -> F64:
        return self.rotation[2]

    def focal(self, height: int) -> float:
        """Focal length in pixels for an image ``height`` pixels tall."""
        return height / (2.0 * math.tan(math.radians(self.fov_y_deg) / 2.0))

    def to_camera(self, points: npt.ArrayLike) -> F64:
        """World points (N, 3) in camera coordinates (x right, y down, z forward)."""
        return (np.asarray(points, np.float64) - self.position) @ self.rotation.T

    def project(self, points: npt.ArrayLike, width: int, height: int) -> F64:
        """Pixel coordinates (N, 2) as (u, v) = (column, row) of world points (N, 3)."""
        cam = self.to_camera(np.atleast_2d(points))
        f = self.focal(height)
        return np.stack([f * cam[:, 0] / cam[:, 2] + width / 2.0, f * cam[:, 1] / cam[:, 2] + height / 2.0], axis=1)


def look_at(
    position: npt.ArrayLike,
    target: npt.ArrayLike = (0.0, 0.0, 0.0),
    up: npt.ArrayLike = (0.0, 1.0, 0.0),
    fov_y_deg: float = VALIDATOR_FOV_Y_DEG,
) -> Camera:
    """A camera at ``position`` looking at ``target`` with ``up`` pointing up in the image."""
    pos = np.asarray(position, np.float64)
    forward = np.asarray(target, np.float64) - pos
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, np.asarray(up, np.float64))
    norm = np.linalg.norm(right)
    if norm < 1e-9:
        raise ValueError("look_at: the view direction is parallel to the up vector")
    right /= norm
    down = np.cross(forward, right)
    return Camera(pos, np.stack([right, down, forward]), float(fov_y_deg))


def orbit_camera(
    azimuth_deg: float,
    elevation_deg: float = VALIDATOR_ELEVATION_DEG,
    radius: float = VALIDATOR_RADIUS,
    fov_y_deg: float = VALIDATOR_FOV_Y_DEG,
    target: npt.ArrayLike = (0.0, 0.0, 0.0),
) -> Camera:
    """A camera on the orbit ``(azimuth, elevation, radius)`` around ``target``, world +Y up."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    offset = radius * np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    return look_at(np.asarray(target, np.float64) + offset, target, (0.0, 1.0, 0.0), fov_y_deg)


def validator_cameras(
    n_views: int = VALIDATOR_VIEWS,
    elevation_deg: float = VALIDATOR_ELEVATION_DEG,
    radius: float = VALIDATOR_RADIUS,
    fov_y_deg: float = VALIDATOR_FOV_Y_DEG,
) -> list[Camera]:
    """The SN17 validator's ring: ``n_views`` azimuths evenly spaced over [0, 360)."""
    return [orbit_camera(360.0 * i / n_views, elevation_deg, radius, fov_y_deg) for i in range(n_views)]
