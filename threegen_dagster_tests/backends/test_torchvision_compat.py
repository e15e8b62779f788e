"""The import-time torchvision shim: what it implements behaves as torchvision's does, what it only
names refuses to be used, and it is gone from sys.modules after the block."""

import importlib.util
import sys

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from threegen_dagster.backends import _torchvision_compat as T  # noqa: E402

no_real_torchvision = pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None,
                                         reason="a real torchvision is installed: the shim steps aside")


def test_frozen_batch_norm_equals_batch_norm_in_eval_mode():
    torch.manual_seed(0)
    reference = torch.nn.BatchNorm2d(5).eval()
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean"):
            getattr(reference, name).copy_(torch.randn(5))
        reference.running_var.copy_(torch.rand(5) + 0.5)
    frozen = T.FrozenBatchNorm2d(5)
    frozen.load_state_dict(reference.state_dict())  # num_batches_tracked is dropped, as torchvision does
    x = torch.randn(2, 5, 7, 7)
    torch.testing.assert_close(frozen(x), reference(x), rtol=1e-5, atol=1e-5)


def test_to_tensor_scales_uint8_and_keeps_floats():
    array = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    out = T.ToTensor()(Image.fromarray(array))
    assert out.shape == (3, 2, 3) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.from_numpy(array).permute(2, 0, 1).float() / 255)
    floats = np.random.default_rng(0).random((4, 4, 3)).astype(np.float32)
    torch.testing.assert_close(T.ToTensor()(floats), torch.from_numpy(floats).permute(2, 0, 1))


def test_training_only_names_refuse_to_be_built():
    with pytest.raises(NotImplementedError, match="torchvision.transforms.ColorJitter needs the real torchvision"):
        T.ColorJitter(0.4)


@no_real_torchvision
def test_the_shim_is_whole_inside_the_block_and_gone_after():
    with T.shimmed_torchvision() as shimmed:
        assert shimmed
        from torchvision.datasets import CIFAR10
        from torchvision.ops.misc import FrozenBatchNorm2d
        from torchvision.transforms import InterpolationMode
        import torchvision.transforms.functional as F

        assert FrozenBatchNorm2d is T.FrozenBatchNorm2d and F.InterpolationMode is InterpolationMode
        with pytest.raises(NotImplementedError, match=r"CIFAR10 needs the real torchvision"):
            CIFAR10("/nowhere")
        with pytest.raises(AttributeError, match="not in threegen's torchvision compat shim"):
            F.resize  # noqa: B018
        with pytest.raises(ImportError, match=r"torchvision\.models"):
            import torchvision.models.feature_extraction  # noqa: F401 - timm expects this to fail cleanly
    assert not any(name == "torchvision" or name.startswith("torchvision.") for name in sys.modules)
    assert importlib.util.find_spec("torchvision") is None
