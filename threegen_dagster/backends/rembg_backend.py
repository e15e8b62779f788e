"""rembg background removal: u2net, isnet, BiRefNet, ... run by onnxruntime (CUDA when present).

rembg fetches a missing model with pooch on first use, which offline hangs or fails obscurely,
and verifies no checksum of a file that is already there. So ``load()`` finds the file itself,
the way rembg's sessions do, and fails with the path and the download address before rembg
is asked for anything: with the file present rembg never touches the network. rembg is
imported inside ``load()``; no Dagster imports.
"""

from __future__ import annotations

import inspect
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .gpu import BackendError, require
from .stages import Background

FOREGROUND_ALPHA = 128  # a pixel at least half opaque is foreground, as in matting.foreground_mask
_UNSUPPORTED = {"sam": "needs prompt points or boxes, not a bare image",
                "u2net_cloth_seg": "returns one mask per garment class, not a foreground"}


@dataclass(frozen=True)
class RembgConfig:
    model: str = "u2netp"  # a rembg session name: u2net, u2netp, isnet-general-use, birefnet-general, ...
    model_home: str | None = None  # folder holding <model>.onnx (rembg's U2NET_HOME); None -> rembg's default
    model_path: str | None = None  # an explicit .onnx file (rembg's u2net_custom session); overrides model/home
    alpha_matting: bool = False
    providers: tuple[str, ...] = ()  # onnxruntime providers; () -> rembg's choice (CUDA first when available)


class RembgBackground(Background):
    """The ``background`` backend ``rembg``."""

    name, options_type = "rembg", RembgConfig
    env = {"model": ("THREEGEN_REMBG_MODEL", str), "model_home": ("THREEGEN_REMBG_HOME", str)}

    def __init__(self, config: RembgConfig) -> None:
        self.config = config
        self._session: Any = None
        self._model_file: str | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._session is not None

    def load(self) -> None:
        with self._lock:
            if self._session is None:
                self._session = self._new_session()

    def unload(self) -> None:
        self._session = None

    def describe(self) -> dict[str, Any]:
        providers = list(self._session.inner_session.get_providers()) if self._session else []
        return {"backend": "rembg",
                "model": self._session_name(),
                "model_file": self._model_file,
                "providers": providers,
                "device": "cuda" if "CUDAExecutionProvider" in providers else "cpu"}

    def __call__(self, image: Image.Image) -> Image.Image:
        """An RGBA copy of ``image`` whose alpha is the model's foreground mask."""
        if image.has_transparency_data:
            rgba = image.convert("RGBA")
            if np.asarray(rgba)[..., 3].min() < 255:
                return rgba  # already cut out (an image prompt with transparency)
        self.load()
        import rembg

        out = rembg.remove(image.convert("RGB"), session=self._session, alpha_matting=self.config.alpha_matting)
        out = out.convert("RGBA")
        if np.asarray(out)[..., 3].max() < FOREGROUND_ALPHA:
            raise BackendError(f"rembg ({self._session_name()}) found no foreground: no pixel of the "
                               f"{image.width}x{image.height} image is even half opaque")
        return out

    def _session_name(self) -> str:
        if not self.config.model_path:
            return self.config.model
        # dis_custom and ben_custom read other architectures from a path the same way
        return self.config.model if self.config.model.endswith("_custom") else "u2net_custom"

    def _new_session(self) -> Any:
        require("onnxruntime")  # before rembg: importing rembg without it prints and calls sys.exit(1)
        require("rembg")
        import onnxruntime
        import rembg

        kwargs: dict[str, Any] = {}
        if self.config.providers:
            missing = [p for p in self.config.providers if p not in onnxruntime.get_available_providers()]
            if missing:
                raise BackendError(f"onnxruntime has no {', '.join(missing)} (available: "
                                   f"{', '.join(onnxruntime.get_available_providers())}); on a GPU box "
                                   f"install onnxruntime-gpu instead of onnxruntime")
            kwargs["providers"] = list(self.config.providers)  # rembg ignores a tuple
        if self.config.model_path:
            self._model_file = kwargs["model_path"] = self._custom_model_file()
            # rembg refuses a model_path outside its home folder: make the file's folder the home
            home = os.path.dirname(self._model_file)
        else:
            self._model_file, home = self._named_model_file(), self.config.model_home
        with _u2net_home(home):
            try:
                return rembg.new_session(self._session_name(), **kwargs)
            except Exception as exc:  # onnxruntime cannot read the file, a provider fails to start, ...
                raise BackendError(f"rembg could not load {self._model_file}: {type(exc).__name__}: {exc}") from exc

    def _custom_model_file(self) -> str:
        path = os.path.abspath(os.path.expanduser(self.config.model_path))
        if not os.path.isfile(path):
            raise BackendError(f"rembg model_path {path} does not exist")
        return path

    def _named_model_file(self) -> str:
        from rembg.sessions import sessions

        name = self.config.model
        session = sessions.get(name)
        usable = [n for n, s in sessions.items()
                  if s.is_local() and not n.endswith("_custom") and n not in _UNSUPPORTED]
        if session is None:
            raise BackendError(f"rembg has no model {name!r}: use one of {', '.join(usable)} "
                               f"(or model_path for a custom .onnx)")
        if not session.is_local():
            raise BackendError(f"rembg model {name!r} sends images to a remote service; use one of {', '.join(usable)}")
        if name.endswith("_custom"):
            raise BackendError(f"rembg model {name!r} needs model_path (the .onnx file)")
        if name in _UNSUPPORTED:
            raise BackendError(f"rembg model {name!r} {_UNSUPPORTED[name]}; use one of {', '.join(usable)}")
        fname = f"{name}.onnx"  # how every single-file rembg session names its download
        with _u2net_home(self.config.model_home):
            found = session.resolve_existing(fname)
            flat, nested = os.path.join(session.legacy_home(), fname), os.path.join(session.model_dir(), fname)
        if found is None:
            url = _download_url(session)
            source = f"download {url} to {flat}, or " if url else ""
            raise BackendError(
                f"rembg model {name!r} not found at {flat} (nor {nested}), and it is not downloaded at run "
                f"time: {source}run `rembg d {name}` on a connected machine (rembg's cli extra; with "
                f"U2NET_HOME=<folder> the file lands in <folder>/models/{name}/) and copy {fname} across. "
                f"model_home (U2NET_HOME) sets the folder")
        return os.path.abspath(found)


@contextmanager
def _u2net_home(home: str | None) -> Iterator[None]:
    """rembg reads its model folder from U2NET_HOME at call time: point it at ``home`` meanwhile.
    (Process-wide, so two threads loading different homes at once could cross; loads are rare.)"""
    if home is None:
        yield
        return
    before = os.environ.get("U2NET_HOME")
    os.environ["U2NET_HOME"] = os.path.abspath(os.path.expanduser(home))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("U2NET_HOME", None)
        else:
            os.environ["U2NET_HOME"] = before


def _download_url(session: type) -> str | None:
    """The release address hard-coded in the session's download_models (None if not found)."""
    try:
        found = re.search(r"https://[^\s\"']+\.onnx", inspect.getsource(session.download_models))
    except (OSError, TypeError):
        return None
    return found.group(0) if found else None
