"""The procedural text-to-image stand-in: determinism, prompt words, framing."""

import colorsys

import numpy as np
import pytest
from scipy import ndimage

from threegen_dagster.backends import procedural
from threegen_dagster.backends.procedural import SHAPES, render_prompt, scene_for

SIZE = 96


def pixels(prompt: str, seed: int = 0, size: int = SIZE) -> np.ndarray:
    return np.asarray(render_prompt(prompt, seed, size))


def object_mask(image: np.ndarray) -> np.ndarray:
    """Pixels clearly not the white background."""
    return np.abs(image.astype(int) - 255).max(axis=2) > 20


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return rows[0], rows[-1], cols[0], cols[-1]


def test_same_prompt_and_seed_give_identical_pixels():
    assert np.array_equal(pixels("a red cube", 7), pixels("a red cube", 7))


def test_different_seeds_give_different_images():
    a, b = pixels("a red cube", 1), pixels("a red cube", 2)
    assert scene_for("a red cube", 1) != scene_for("a red cube", 2)
    assert np.abs(a.astype(int) - b.astype(int)).sum(axis=2).astype(bool).mean() > 0.01


@pytest.mark.parametrize("size", [64, 130])
def test_size_parameter_gives_a_square_rgb_image_of_that_size(size):
    image = render_prompt("blue ball", 0, size)
    assert image.mode == "RGB"
    assert image.size == (size, size)


def hues(prompt: str) -> np.ndarray:
    image = pixels(prompt, 3)
    hsv = np.array([colorsys.rgb_to_hsv(*(p / 255.0)) for p in image[object_mask(image)]])
    return hsv[hsv[:, 1] > 0.3, 0]  # saturated pixels only


def test_red_cube_is_mostly_red():
    h = hues("red cube")
    assert len(h) > 500
    assert np.mean((h < 0.05) | (h > 0.95)) > 0.9


def test_blue_ball_is_mostly_blue():
    h = hues("blue ball")
    assert len(h) > 500
    assert np.mean((h > 0.55) & (h < 0.72)) > 0.9


@pytest.mark.parametrize(
    "prompt, shape",
    [
        ("a shiny planet", "sphere"),
        ("treasure chest", "cube"),
        ("coffee mug", "cylinder"),
        ("a pine tree", "cone"),
        ("glazed donut", "torus"),
        ("a wooden throne", "chair"),
        ("office desk", "table"),
        ("a ball on a table", "sphere"),  # the first shape word wins
    ],
)
def test_shape_words_choose_the_shape(prompt, shape):
    assert scene_for(prompt, 0).shape == shape


def test_colour_word_sets_the_colour_up_to_a_small_seed_jitter():
    for seed in range(5):
        colour = np.array(scene_for("a green vase", seed).colour)
        assert np.all(np.abs(colour - procedural.COLOURS["green"]) <= 0.1 * np.array(procedural.COLOURS["green"]) + 1)


def test_unknown_words_pick_a_shape_from_the_prompt_alone_and_still_render():
    scenes = [scene_for("zorblat quixotic", seed) for seed in range(4)]
    assert scenes[0].shape in SHAPES
    assert len({s.shape for s in scenes}) == 1  # the seed does not change the shape
    assert object_mask(pixels("zorblat quixotic")).mean() > 0.1


@pytest.mark.parametrize("prompt", ["red cube", "wooden chair", "yellow cone", "blue ball"])
def test_background_is_pure_white(prompt):
    image = pixels(prompt)
    for corner in (image[:4, :4], image[:4, -4:], image[-4:, :4], image[-4:, -4:]):
        assert (corner == 255).all()
    # also inside the object's bounding box, a few pixels clear of the (resampled) edge
    clear = ~ndimage.binary_dilation(object_mask(image), iterations=5)
    assert (image[clear] == 255).all()


@pytest.mark.parametrize("prompt", ["red cube", "wooden chair", "yellow cone", "glazed donut"])
def test_object_is_centred_and_fills_most_of_the_frame(prompt):
    top, bottom, left, right = bbox(object_mask(pixels(prompt)))
    assert abs((top + bottom) / 2 - (SIZE - 1) / 2) <= 2
    assert abs((left + right) / 2 - (SIZE - 1) / 2) <= 2
    longer = max(bottom - top, right - left) + 1
    assert 0.75 * SIZE <= longer <= 0.9 * SIZE


def test_cone_apex_is_up():
    mask = object_mask(pixels("yellow cone"))
    top, bottom, _, _ = bbox(mask)
    height = bottom - top
    near_top = mask[top + height // 5].sum()
    near_bottom = mask[bottom - height // 5].sum()
    assert near_top < 0.6 * near_bottom


def enclosed_background(mask: np.ndarray) -> int:
    """Background pixels not connected to the image border (a hole seen through the object)."""
    labels, _ = ndimage.label(~mask)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return int((~mask & ~np.isin(labels, border)).sum())


def test_torus_seen_from_above_shows_its_hole_and_sphere_does_not():
    def from_above(shape: str) -> np.ndarray:
        scene = procedural.Scene(shape, (200, 60, 60), azimuth=30.0, elevation=60.0, size=1.0)
        return object_mask(np.asarray(procedural.render_scene(scene, SIZE)))

    assert enclosed_background(from_above("torus")) > 100
    assert enclosed_background(from_above("sphere")) == 0


def test_sphere_silhouette_is_a_disc():
    mask = object_mask(pixels("blue ball"))
    top, bottom, left, right = bbox(mask)
    h, w = bottom - top + 1, right - left + 1
    assert abs(h - w) <= 2
    assert mask.sum() / (h * w) == pytest.approx(np.pi / 4, abs=0.04)
