"""Pure splat toolkit (no Dagster): gaussian clouds, PLY I/O, the SN17 SPZ codec, mesh to
gaussians, validator-style normalisation and checks, and a CPU splat renderer."""

from .cloud import SH_C0, GaussianCloud, SplatError
from .ply import PlyError, read_ply, write_ply
from .spz import SpzError

__all__ = ["SH_C0", "GaussianCloud", "PlyError", "SplatError", "SpzError", "read_ply", "write_ply"]
