"""What a generation's viewer page shows, read from the store: the latest prompt image, mesh, splat
and score. Each piece falls back to the next-best stored form (the cut-out for a pruned image, the
initial mesh for a refined one). The splat is the submitted SN17 SPZ re-wrapped as Niantic's SPZ,
which web viewers read (SN17's zstd dialect they cannot; ``niantic.py``), or else the 3DGS PLY. A
piece that cannot be read is a line in ``problems`` and the page shows the rest. No Dagster imports."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ..artifacts import ArtifactStore, Manifest
from ..ledger import Ledger
from ..splats import SplatError
from .niantic import sn17_to_niantic
from ..storage import StorageError

# the largest stored file a page embeds (a page is one file: it must open in a browser); larger
# files are named on the page and left to `threegen get`
MAX_EMBED_BYTES = 64 * 2**20
IMAGES = ("generated_image", "foreground_image")
MESHES = ("refined_mesh", "initial_mesh")
FRAMES = ("y_up", "y_down")
_ERRNO = re.compile(r"^\[Errno \d+\] ")  # OSError's prefix: the message says it all


@dataclass(frozen=True)
class Shown:
    """One embedded file: its bytes and where they came from (asset, version, what was done)."""

    data: bytes
    asset: str
    version: int
    note: str = ""
    file_type: str = ""  # what the browser is told it is (the splat: "spz" or "ply")

    @property
    def label(self) -> str:
        return f"{self.asset} v{self.version}" + (f", {self.note}" if self.note else "")


@dataclass(frozen=True)
class ViewerData:
    key: str
    prompt: str  # the ledger's label (the text, or "[image ...] caption")
    seed: int
    image: Shown | None = None  # PNG
    mesh: Shown | None = None  # GLB
    splat: Shown | None = None  # Niantic SPZ or 3DGS PLY
    score: dict | None = None  # validation_score's JSON
    frame: str = "y_up"  # the splat's frame (gaussian_splat's metadata)
    problems: list[str] = field(default_factory=list)


@dataclass
class _Reader:
    artifacts: ArtifactStore
    key: str
    max_bytes: int
    problems: list[str] = field(default_factory=list)

    def latest(self, asset: str) -> tuple[Manifest, bytes] | None:
        """The newest readable version's bytes, or None with the reason in ``problems`` (nothing
        stored yet is no problem); a file over ``max_bytes`` is named, never read."""
        try:
            manifest = self.artifacts.latest(self.key, asset)
            if manifest is None:
                return None
            if manifest.pruned_at is not None:
                self.problems.append(f"{asset} v{manifest.version} was pruned by retention")
                return None
            if manifest.bytes > self.max_bytes:
                self.problems.append(f"{asset} v{manifest.version} is {manifest.bytes:,} bytes, over the "
                                     f"{self.max_bytes:,} a page embeds: `threegen get {self.key} {asset}`")
                return None
            return manifest, self.artifacts.load(self.key, asset, manifest.version)[1]
        except StorageError as exc:
            self.problems.append(f"{asset}: {_ERRNO.sub('', str(exc))}")
            return None

    def first(self, assets: tuple[str, ...]) -> Shown | None:
        for asset in assets:
            found = self.latest(asset)
            if found:
                return Shown(found[1], asset, found[0].version)
        return None

    def splat(self) -> Shown | None:
        """The submitted SN17 SPZ as Niantic SPZ (the same payload; a sixth of the PLY's size), else
        the 3DGS PLY."""
        found = self.latest("compressed_splat")
        if found:
            try:
                return Shown(sn17_to_niantic(found[1], self.max_bytes), "compressed_splat", found[0].version,
                             "SN17 SPZ as Niantic SPZ", "spz")
            except SplatError as exc:
                self.problems.append(f"compressed_splat v{found[0].version} cannot be shown: {exc}")
        found = self.latest("gaussian_splat")
        return Shown(found[1], "gaussian_splat", found[0].version, file_type="ply") if found else None

    def frame(self) -> str:
        try:
            manifest = self.artifacts.latest(self.key, "gaussian_splat")  # its record stays when pruned
        except StorageError:
            return "y_up"
        frame = manifest.metadata.get("frame") if manifest else None
        return frame if frame in FRAMES else "y_up"

    def score(self) -> dict | None:
        found = self.latest("validation_score")
        if found is None:
            return None
        try:
            score = json.loads(found[1])
        except ValueError as exc:
            self.problems.append(f"validation_score v{found[0].version} is not JSON: {exc}")
            return None
        if not isinstance(score, dict):
            self.problems.append(f"validation_score v{found[0].version} is not a JSON object")
            return None
        return score


def load_generation(artifacts: ArtifactStore, ledger: Ledger, key: str,
                    max_embed_bytes: int = MAX_EMBED_BYTES) -> ViewerData:
    """Everything the page shows for ``key`` (``UnknownGeneration`` if the ledger lacks it)."""
    entry = ledger.get(key)
    read = _Reader(artifacts, entry.key, max_embed_bytes)
    return ViewerData(key=entry.key, prompt=entry.label, seed=entry.seed, image=read.first(IMAGES),
                      mesh=read.first(MESHES), splat=read.splat(), score=read.score(), frame=read.frame(),
                      problems=read.problems)
