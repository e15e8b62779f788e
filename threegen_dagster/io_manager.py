"""The typed I/O manager: every asset is a real file a person can open (PNG, GLB, PLY, SPZ, JSON).

Partitioned assets land at ``generations/<key>/<asset>.<ext>``; beside each, a manifest
(``generations/<key>/manifest/<asset>.json``) records the file's size, sha256, the run that
wrote it and the materialization's metadata, so the catalog and other workers can read
what happened from the store alone. Unpartitioned assets land in ``catalog/``.
"""


import hashlib
import io
import json
import time
from dataclasses import dataclass
from typing import Any, Callable

import dagster as dg
import pandas as pd
import trimesh
from PIL import Image

from .catalog import manifest_path
from .resources import StoreResource, open_image
from .splats import read_ply, write_ply


@dataclass(frozen=True)
class Format:
    ext: str
    dump: Callable[[Any], bytes]
    load: Callable[[bytes], Any]
    extras: tuple[tuple[str, Callable[[Any], bytes]], ...] = ()


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _glb(mesh: trimesh.Trimesh) -> bytes:
    return mesh.export(file_type="glb")


def _mesh_ply(mesh: trimesh.Trimesh) -> bytes:
    return mesh.export(file_type="ply")


def _load_mesh(data: bytes) -> trimesh.Trimesh:
    return trimesh.load(io.BytesIO(data), file_type="glb", force="mesh", process=False)


def _json(value: dict) -> bytes:
    return json.dumps(value, indent=1, sort_keys=True).encode()


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


FORMATS: dict[str, Format] = {
    "generated_image": Format("png", _png, open_image),
    "foreground_image": Format("png", _png, open_image),
    "initial_mesh": Format("glb", _glb, _load_mesh, extras=(("ply", _mesh_ply),)),
    "refined_mesh": Format("glb", _glb, _load_mesh),
    "gaussian_splat": Format("ply", write_ply, read_ply),
    "compressed_splat": Format("spz", bytes, bytes),
    "validation_score": Format("json", _json, json.loads),
    "generation_catalog": Format("csv", _csv, lambda data: pd.read_csv(io.BytesIO(data))),
}


def artifact_path(key: str | None, asset: str) -> str:
    fmt = FORMATS[asset]
    return f"generations/{key}/{asset}.{fmt.ext}" if key else f"catalog/{asset}.{fmt.ext}"


def _plain(metadata: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready metadata values; markdown previews and tables stay in Dagster only."""
    out = {}
    for name, value in metadata.items():
        raw = getattr(value, "value", value)
        if isinstance(value, (dg.MarkdownMetadataValue, dg.TableMetadataValue)) or name == "preview":
            continue
        if isinstance(raw, (str, int, float, bool)) or raw is None:
            out[name] = raw
        elif isinstance(raw, (list, dict)):
            out[name] = json.loads(json.dumps(raw, default=str))
    return out


class ArtifactIOManager(dg.ConfigurableIOManager):
    store: dg.ResourceDependency[StoreResource]

    def _target(self, context: dg.OutputContext | dg.InputContext) -> tuple[str | None, str]:
        asset = context.asset_key.path[-1]
        if asset not in FORMATS:
            raise dg.DagsterInvariantViolationError(f"ArtifactIOManager has no file format for asset {asset!r}")
        key = context.asset_partition_key if context.has_asset_partitions else None
        return key, asset

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        key, asset = self._target(context)
        fmt, store = FORMATS[asset], self.store.store()
        data = fmt.dump(obj)
        path = artifact_path(key, asset)
        store.write(path, data)
        for ext, dump in fmt.extras:
            store.write(path.rsplit(".", 1)[0] + f".{ext}", dump(obj))
        sha = hashlib.sha256(data).hexdigest()
        facts = {"path": store.uri(path), "bytes": len(data), "sha256": sha}
        context.add_output_metadata({"path": dg.MetadataValue.path(facts["path"]), "bytes": len(data), "sha256": sha})
        if key:
            manifest = {"asset": asset, "key": key, "file": path, "format": fmt.ext, "bytes": len(data),
                        "sha256": sha, "run_id": context.run_id, "written_at": time.time(),
                        "metadata": _plain(dict(context.output_metadata))}
            store.write(manifest_path(key, asset), _json(manifest))

    def load_input(self, context: dg.InputContext) -> Any:
        key, asset = self._target(context)
        data = self.store.store().read(artifact_path(key, asset))
        return FORMATS[asset].load(data)
