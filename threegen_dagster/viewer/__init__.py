"""The 3D viewer: a self-contained HTML page per generation (mesh and splat, turnable, next to the
prompt image and the score) and ``threegen view``, a read-only loopback HTTP server over the store.
No Dagster imports."""

DEFAULT_PORT = 8770  # `threegen view`, on 127.0.0.1

from .page import FILENAME, render_page, viewer_html
from .source import ViewerData, load_generation

__all__ = ["DEFAULT_PORT", "FILENAME", "ViewerData", "load_generation", "render_page", "viewer_html"]
