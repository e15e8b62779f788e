"""The vendored JavaScript modules (``vendor/``, see its README) as an import map of ``data:`` URLs,
so a viewer page runs from file://, from a presigned S3 link or from the loopback server alike,
with nothing fetched. A ``data:`` module cannot resolve a relative import (it has no base URL), so
each relative specifier in a vendored file (``./three.core.min.js``, ``../utils/...``) is rewritten
to the bare specifier of the vendored file it names; one that names no vendored module is an error
here, when the map is built, never a blank page. No Dagster imports."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import posixpath
import re
from importlib import resources

# bare specifier -> file under vendor/ (three's own "three/addons/" names for its examples/jsm)
MODULES = {
    "three": "three/build/three.module.min.js",
    "three/build/three.core.min.js": "three/build/three.core.min.js",
    "three/addons/loaders/GLTFLoader.js": "three/examples/jsm/loaders/GLTFLoader.js",
    "three/addons/controls/OrbitControls.js": "three/examples/jsm/controls/OrbitControls.js",
    "three/addons/utils/BufferGeometryUtils.js": "three/examples/jsm/utils/BufferGeometryUtils.js",
    "three/addons/postprocessing/Pass.js": "three/examples/jsm/postprocessing/Pass.js",
    "@sparkjsdev/spark": "spark/dist/spark.module.min.js",
}
# a static import or re-export whose specifier is relative: `from "./x.js"`, `import "../y.js"`
_RELATIVE = re.compile(r"""(\bfrom\s*|\bimport\s*)(["'])(\.\.?/[^"'\s]+)\2""")


class VendorError(RuntimeError):
    """A vendored file that is missing, altered, or imports something not vendored."""


def vendor_file(path: str) -> bytes:
    return resources.files(__package__).joinpath("vendor", *path.split("/")).read_bytes()


def check_sums() -> list[str]:
    """Every file ``vendor/SHA256SUMS`` lists, checked; raises naming the first that differs."""
    checked = []
    for line in vendor_file("SHA256SUMS").decode().splitlines():
        digest, path = line.split(maxsplit=1)
        try:
            data = vendor_file(path)
        except FileNotFoundError:
            raise VendorError(f"vendored file {path} is missing: run scripts/vendor_viewer.sh") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise VendorError(f"vendored file {path} differs from SHA256SUMS: run scripts/vendor_viewer.sh")
        checked.append(path)
    return checked


def bare_imports(path: str, source: str) -> str:
    """``source`` (the vendored file ``path``) with each relative import made the bare specifier of
    the vendored module it resolves to."""
    by_file = {file: spec for spec, file in MODULES.items()}

    def bare(match: re.Match) -> str:
        target = posixpath.normpath(posixpath.join(posixpath.dirname(path), match[3]))
        if target not in by_file:
            raise VendorError(f"vendored {path} imports {match[3]!r} ({target}), which is not vendored: "
                              f"add it to scripts/vendor_viewer.sh and MODULES")
        return f"{match[1]}{match[2]}{by_file[target]}{match[2]}"

    return _RELATIVE.sub(bare, source)


def data_url(source: str) -> str:
    return "data:text/javascript;base64," + base64.b64encode(source.encode("utf-8")).decode("ascii")


@functools.cache
def import_map() -> str:
    """The ``<script type="importmap">`` body: every vendored module as a ``data:`` URL (built once
    per process; the same for every page)."""
    imports = {spec: data_url(bare_imports(file, vendor_file(file).decode("utf-8"))) for spec, file in MODULES.items()}
    return json.dumps({"imports": imports}, indent=0)
