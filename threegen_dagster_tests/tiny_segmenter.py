"""Tiny ONNX segmentation models with the signature of rembg's u2net-style sessions, so tests
run rembg's real session code without the 4-170 MB released weights.

rembg (sessions/u2net*.py) feeds ``get_inputs()[0]`` a 1x3x320x320 float32 image, normalised
with the ImageNet mean and std, and reads ``outputs[0][:, 0]`` as the mask, which it min-max
stretches to 0..255. Built with the onnx helper API rather than torch.onnx.export: a few nodes
need no exporter (whose default dynamo path wants onnxscript), and the bytes do not depend on
the torch version.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE = 320
OPSET = 17  # old enough for any onnxruntime rembg supports
IR_VERSION = 8


def build_tiny_segmenter(path: Path, seed: int = 0) -> Path:
    """A two-layer conv net: 3x3 conv (3->8), ReLU, 1x1 conv (8->1), sigmoid.

    Channel 0 is set by hand to "darkness" (minus the pixel's mean normalised colour), the other
    seven are random. Purely random weights give any mask at all, often the background as the
    object; the darkness channel makes the object on a plain light background (what the
    text-to-image prompts ask for) the opaque part, whatever the seed. A second output mimics
    u2net's side outputs (rembg reads only the first).
    """
    rng = np.random.default_rng(seed)
    w1, b1 = rng.normal(0, 0.5, (8, 3, 3, 3)), rng.normal(0, 0.1, 8)
    w1[0], b1[0] = 0.0, 3.0  # white is about +2.4 per normalised channel, saturated colours < 0.5
    w1[0, :, 1, 1] = -1 / 3
    w2 = rng.normal(0, 0.03, (1, 8, 1, 1))  # random, but small beside darkness
    w2[0, 0] = 2.0
    weights = {"w1": w1, "b1": b1, "w2": w2, "b2": np.array([-4.0])}  # white -> about -3, red -> +2.6
    nodes = [
        helper.make_node("Conv", ["input.1", "w1", "b1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "w2", "b2"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["d0"]),
    ]
    return _save(path, nodes, weights, outputs=["d0", "logits"])


def build_blank_segmenter(path: Path) -> Path:
    """A model that ignores its input and finds a single foreground pixel out of 320x320: after
    rembg resizes the mask to a small image, nothing is even half opaque ("no foreground")."""
    mask = np.zeros((1, 1, SIZE, SIZE))
    mask[0, 0, SIZE // 2, SIZE // 2] = 1.0
    weights = {"mask": mask, "zero": np.zeros(1)}
    nodes = [  # mask + 0 * mean(input): the input stays part of the graph
        helper.make_node("ReduceMean", ["input.1"], ["mean"], keepdims=1),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["mask", "nothing"], ["d0"]),
    ]
    return _save(path, nodes, weights, outputs=["d0"])


def _save(path: Path, nodes: list, weights: dict[str, np.ndarray], outputs: list[str]) -> Path:
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, SIZE, SIZE])
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 1, SIZE, SIZE]) for name in outputs]
    init = [numpy_helper.from_array(value.astype(np.float32), name) for name, value in weights.items()]
    graph = helper.make_graph(nodes, "tiny_segmenter", [image], outs, initializer=init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION, producer_name="threegen_dagster_tests")
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
