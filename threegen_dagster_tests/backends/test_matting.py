"""The border flood-fill background remover."""

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from threegen_dagster.backends.matting import MattingError, foreground_mask, remove_background

SIZE = 128
DISC = (30, 40, 90, 100)  # a 61 px disc centred at (60, 70): about 2900 pixels
BLOB = (100, 8, 111, 19)  # 144 px, 5% of the disc: above min_fraction (2%)
SPECK = (8, 112, 10, 114)  # 9 px, 0.3% of the disc: below it
HOLE = (52, 62, 68, 78)  # background-coloured, fully inside the disc


def scene(background=(255, 255, 255), hole: bool = False) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), background)
    draw = ImageDraw.Draw(image)
    draw.ellipse(DISC, fill=(200, 40, 40))
    draw.rectangle(BLOB, fill=(40, 40, 200))
    draw.rectangle(SPECK, fill=(40, 160, 40))
    if hole:
        draw.ellipse(HOLE, fill=background)
    return image


def alpha_of(image: Image.Image) -> np.ndarray:
    out = remove_background(image)
    assert out.mode == "RGBA" and out.size == image.size
    return np.asarray(out)[..., 3]


@pytest.mark.parametrize("background", [(255, 255, 255), (128, 128, 132), (30, 90, 60)])
def test_object_kept_background_cleared(background):
    alpha = alpha_of(scene(background))
    assert alpha[0].max() == alpha[-1].max() == alpha[:, 0].max() == alpha[:, -1].max() == 0
    disc_inside = alpha[DISC[1] + 3: DISC[3] - 2, 58:63]  # a vertical strip through the disc's middle
    assert (disc_inside == 255).all()
    assert alpha[70, 60] == 255
    assert alpha[5, 60] == 0 and alpha[70, 110] == 0  # background between objects


def test_second_blob_above_min_fraction_is_kept_and_speck_dropped():
    alpha = alpha_of(scene())
    assert (alpha[BLOB[1] + 1: BLOB[3], BLOB[0] + 1: BLOB[2]] == 255).all()
    assert (alpha[SPECK[1] - 1: SPECK[3] + 2, SPECK[0] - 1: SPECK[2] + 2] == 0).all()


def test_min_fraction_decides_which_blobs_survive():
    image = scene()
    strict = np.asarray(remove_background(image, min_fraction=0.1))[..., 3]
    assert (strict[BLOB[1]: BLOB[3] + 1, BLOB[0]: BLOB[2] + 1] == 0).all()
    lax = np.asarray(remove_background(image, min_fraction=0.001))[..., 3]
    assert lax[SPECK[1] + 1, SPECK[0] + 1] == 255


def test_enclosed_background_coloured_hole_stays_opaque():
    alpha = alpha_of(scene(hole=True))
    assert (alpha[HOLE[1]: HOLE[3] + 1, HOLE[0]: HOLE[2] + 1] == 255).all()


def test_colours_are_kept_and_edge_is_soft_only_in_a_thin_ring():
    image = scene()
    out = np.asarray(remove_background(image))
    assert np.array_equal(out[..., :3], np.asarray(image))
    alpha = out[..., 3]
    partial = (alpha > 0) & (alpha < 255)
    assert partial.any()  # feathered
    opaque = alpha == 255
    # partial alpha only on the object's outline and the pixel just outside it
    assert not (partial & ~ndimage.binary_dilation(opaque, np.ones((3, 3), bool), iterations=2)).any()
    hard = np.asarray(remove_background(image, feather=0))[..., 3]
    assert set(np.unique(hard)) == {0, 255}


def test_already_transparent_rgba_is_returned_as_is():
    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[40:80, 30:60] = (10, 200, 30, 255)
    rgba[40:80, 60:62, 3] = 90  # a soft edge
    image = Image.fromarray(rgba, "RGBA")
    out = remove_background(image)
    assert out is not image
    assert np.array_equal(np.asarray(out), rgba)


def test_opaque_rgba_is_matted_like_rgb():
    image = scene()
    assert np.array_equal(np.asarray(remove_background(image.convert("RGBA"))), np.asarray(remove_background(image)))


@pytest.mark.parametrize("colour", [(255, 255, 255), (128, 128, 128)])
def test_plain_image_raises(colour):
    with pytest.raises(MattingError, match=r"no object found: the image is a plain background"):
        remove_background(Image.new("RGB", (64, 64), colour))


def test_near_background_noise_is_background():
    rng = np.random.default_rng(0)
    pixels = 255 - rng.integers(0, 10, (SIZE, SIZE, 3))  # off-white, within the tolerance
    pixels[40:90, 40:90] = (90, 60, 20)
    alpha = np.asarray(remove_background(Image.fromarray(pixels.astype(np.uint8), "RGB")))[..., 3]
    assert (alpha[42:88, 42:88] == 255).all()
    opaque = alpha >= 128
    assert opaque.sum() == pytest.approx(50 * 50, abs=4 * 50)


def test_foreground_mask_thresholds_alpha():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 3] = [[0, 127, 128, 255]] * 4
    mask = foreground_mask(Image.fromarray(rgba, "RGBA"))
    assert mask.dtype == bool
    assert mask.tolist() == [[False, False, True, True]] * 4
