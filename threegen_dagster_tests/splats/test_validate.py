from __future__ import annotations

import dataclasses
import json

import numpy as np
import numpy.typing as npt
import pytest
import trimesh
from scipy.spatial.transform import Rotation

from threegen_dagster.splats.cloud import SH_COEFFS_FOR_DEGREE, GaussianCloud, SplatError
from threegen_dagster.splats.mesh import mesh_to_gaussians
from threegen_dagster.splats.validate import (
    VALIDATOR_MAX_EXTENT,
    FloaterFilter,
    check_for_validator,
    drop_floaters,
    normalize_for_validator,
    quaternion_multiply,
)

Y_DOWN = np.diag([1.0, -1.0, -1.0])


def _random_cloud(n: int = 2000, sh_degree: int = 0, seed: int = 0) -> GaussianCloud:
    """An elongated, off-centre cloud with random anisotropic gaussians."""
    rng = np.random.default_rng(seed)
    return GaussianCloud(
        positions=rng.normal(size=(n, 3)) * [3.0, 1.0, 0.5] + [10.0, -4.0, 2.0],
        log_scales=rng.normal(-3.0, 0.5, (n, 3)),
        rotations=rng.normal(size=(n, 4)),
        opacity_logits=rng.normal(2.0, 1.0, n),
        sh_dc=rng.normal(size=(n, 3)),
        sh_rest=rng.normal(size=(n, SH_COEFFS_FOR_DEGREE[sh_degree], 3)),
    )


def _good_cloud(count: int = 10_000) -> GaussianCloud:
    sphere = trimesh.creation.icosphere(subdivisions=3)
    sphere.visual.vertex_colors = (np.c_[sphere.vertices * 0.5 + 0.5, np.ones(len(sphere.vertices))] * 255).astype(
        np.uint8
    )
    return mesh_to_gaussians(sphere, count, seed=0)


def _with(cloud: GaussianCloud, **arrays: npt.ArrayLike) -> GaussianCloud:
    names = ("positions", "log_scales", "rotations", "opacity_logits", "sh_dc", "sh_rest")
    return GaussianCloud(**{**{name: getattr(cloud, name) for name in names}, **arrays})


def _matrices(rotations: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    return Rotation.from_quat(np.asarray(rotations, np.float64), scalar_first=True).as_matrix()


def _eval_sh(sh_rest: npt.NDArray[np.floating], dirs: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """View-dependent colour of the higher bands (3DGS basis and constants), one direction per gaussian."""
    x, y, z = dirs.T
    xx, yy, zz = x * x, y * y, z * z
    basis = [
        -0.4886025119029199 * y,
        0.4886025119029199 * z,
        -0.4886025119029199 * x,
        1.0925484305920792 * x * y,
        -1.0925484305920792 * y * z,
        0.31539156525252005 * (2 * zz - xx - yy),
        -1.0925484305920792 * x * z,
        0.5462742152960396 * (xx - yy),
        -0.5900435899266435 * y * (3 * xx - yy),
        2.890611442640554 * x * y * z,
        -0.4570457994644658 * y * (4 * zz - xx - yy),
        0.3731763325901154 * z * (2 * zz - 3 * xx - 3 * yy),
        -0.4570457994644658 * x * (4 * zz - xx - yy),
        1.445305721320277 * z * (xx - yy),
        -0.5900435899266435 * x * (xx - 3 * yy),
    ]
    k = sh_rest.shape[1]
    return np.einsum("kn,nkc->nc", np.array(basis[:k]), sh_rest.astype(np.float64))


# normalize_for_validator


def test_normalise_centres_each_axis_and_scales_the_largest_side() -> None:
    cloud = _random_cloud()
    out = normalize_for_validator(cloud)
    np.testing.assert_allclose(out.positions.astype(np.float64).mean(axis=0), 0.0, atol=1e-6)
    sides = np.ptp(out.positions, axis=0)
    assert sides.max() == pytest.approx(VALIDATOR_MAX_EXTENT, rel=1e-6)
    # the validator's own shift (the scalar mean of all coordinates) is then a no-op
    assert abs(out.positions.astype(np.float64).mean()) < 1e-6


def test_normalise_keeps_relative_geometry() -> None:
    cloud = _random_cloud()
    out = normalize_for_validator(cloud, max_extent=2.0)
    source = cloud.positions.astype(np.float64)
    factor = 2.0 / np.ptp(source, axis=0).max()
    np.testing.assert_allclose(out.positions, (source - source.mean(axis=0)) * factor, atol=1e-5)
    np.testing.assert_allclose(out.log_scales, cloud.log_scales + np.log(factor), atol=1e-5)
    np.testing.assert_array_equal(out.rotations, cloud.rotations)
    np.testing.assert_array_equal(out.opacity_logits, cloud.opacity_logits)
    np.testing.assert_array_equal(out.sh_dc, cloud.sh_dc)


def test_normalise_is_idempotent() -> None:
    once = normalize_for_validator(_random_cloud(sh_degree=2))
    twice = normalize_for_validator(once)
    assert twice.allclose(once, atol=1e-6)


def test_y_down_maps_up_to_down() -> None:
    cloud = _random_cloud()
    up = normalize_for_validator(cloud, frame="y_up")
    down = normalize_for_validator(cloud, frame="y_down")
    np.testing.assert_allclose(down.positions, up.positions * [1.0, -1.0, -1.0], atol=1e-7)
    top = np.argmax(up.positions[:, 1])
    assert np.argmin(down.positions[:, 1]) == top
    np.testing.assert_allclose(down.positions.astype(np.float64).mean(axis=0), 0.0, atol=1e-6)
    assert np.ptp(down.positions, axis=0).max() == pytest.approx(VALIDATOR_MAX_EXTENT, rel=1e-6)


def test_y_down_turns_each_gaussian_like_the_positions() -> None:
    cloud = _random_cloud()
    up = normalize_for_validator(cloud)
    down = normalize_for_validator(cloud, frame="y_down")
    long_axis = np.argmax(up.log_scales, axis=1)
    rows = np.arange(len(up))
    world_long_up = _matrices(up.rotations)[rows, :, long_axis]
    world_long_down = _matrices(down.rotations)[rows, :, long_axis]
    np.testing.assert_allclose(world_long_down, world_long_up @ Y_DOWN.T, atol=1e-5)
    # the whole covariance follows: Sigma' = D Sigma D
    r_up, r_down = _matrices(up.rotations), _matrices(down.rotations)
    s2 = np.exp(2 * up.log_scales.astype(np.float64))
    cov_up = np.einsum("nij,nj,nkj->nik", r_up, s2, r_up)
    cov_down = np.einsum("nij,nj,nkj->nik", r_down, s2, r_down)
    np.testing.assert_allclose(cov_down, Y_DOWN @ cov_up @ Y_DOWN, atol=1e-7)


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_y_down_turns_view_dependent_colour(degree: int) -> None:
    cloud = _random_cloud(500, sh_degree=degree)
    up = normalize_for_validator(cloud)
    down = normalize_for_validator(cloud, frame="y_down")
    dirs = np.random.default_rng(1).normal(size=(len(cloud), 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    np.testing.assert_allclose(_eval_sh(down.sh_rest, dirs @ Y_DOWN.T), _eval_sh(up.sh_rest, dirs), atol=1e-5)


def test_y_down_twice_is_y_up() -> None:
    cloud = _random_cloud(sh_degree=3)
    down = normalize_for_validator(cloud, frame="y_down")
    back = normalize_for_validator(down, frame="y_down")
    up = normalize_for_validator(cloud)
    np.testing.assert_allclose(back.positions, up.positions, atol=1e-6)
    np.testing.assert_allclose(back.sh_rest, up.sh_rest)
    same_rotation = np.abs(np.einsum("ij,ij->i", back.unit_rotations, up.unit_rotations))
    np.testing.assert_allclose(same_rotation, 1.0, atol=1e-6)


def test_quaternion_multiply_composes_rotations() -> None:
    a = Rotation.random(50, random_state=1)
    b = Rotation.random(50, random_state=2)
    product = quaternion_multiply(a.as_quat(scalar_first=True), b.as_quat(scalar_first=True))
    np.testing.assert_allclose(_matrices(product), (a * b).as_matrix(), atol=1e-12)


def _object_with_floaters() -> tuple[GaussianCloud, npt.NDArray[np.bool_]]:
    """A sphere of 20,000 gaussians, a dense cluster of 400 far away and 60 scattered ones."""
    sphere = mesh_to_gaussians(trimesh.creation.icosphere(subdivisions=3), 20_000, seed=0)
    rng = np.random.default_rng(2)
    cluster = rng.normal(0.0, 0.05, (400, 3)) + [20.0, 0.0, 0.0]
    scattered = rng.uniform(-30.0, 30.0, (60, 3))
    scattered = scattered[np.linalg.norm(scattered, axis=1) > 3.0]
    extra = np.vstack([cluster, scattered])
    n_extra = len(extra)
    cloud = GaussianCloud(
        positions=np.vstack([sphere.positions, extra]),
        log_scales=np.vstack([sphere.log_scales, np.full((n_extra, 3), -4.0)]),
        rotations=np.vstack([sphere.rotations, np.tile([1.0, 0, 0, 0], (n_extra, 1))]),
        opacity_logits=np.concatenate([sphere.opacity_logits, np.full(n_extra, 3.0)]),
        sh_dc=np.vstack([sphere.sh_dc, np.full((n_extra, 3), 1.0)]),
    )
    return cloud, np.arange(len(cloud)) < len(sphere)


def test_floater_removal_drops_far_clusters_and_keeps_the_object() -> None:
    cloud, is_object = _object_with_floaters()
    out = normalize_for_validator(cloud, remove_floaters=True)
    kept_object = np.count_nonzero(out.sh_dc[:, 0] == 0.0)
    assert np.count_nonzero(out.sh_dc[:, 0] == 1.0) == 0
    assert kept_object >= 0.99 * is_object.sum()
    # the extent is that of the sphere (radius 1), not of the floaters
    assert np.ptp(out.positions, axis=0).max() == pytest.approx(VALIDATOR_MAX_EXTENT, rel=1e-6)
    radius = np.linalg.norm(out.positions, axis=1)
    np.testing.assert_allclose(np.median(radius), VALIDATOR_MAX_EXTENT / 2, rtol=0.02)


def test_each_floater_rule_does_its_part() -> None:
    cloud, is_object = _object_with_floaters()
    no_cluster_rule = drop_floaters(cloud, FloaterFilter(min_cluster_fraction=0.0))
    assert np.count_nonzero(no_cluster_rule.positions[:, 0] > 15) == 400  # the dense cluster stays
    assert len(no_cluster_rule) == is_object.sum() + 400  # the scattered ones go
    no_outlier_rule = drop_floaters(cloud, FloaterFilter(outlier_ratio=np.inf, min_cluster_fraction=0.05))
    assert np.count_nonzero(no_outlier_rule.sh_dc[:, 0] == 1.0) == 0  # scattered ones are clusters of one


def test_floater_removal_leaves_a_clean_object_alone() -> None:
    cloud = _good_cloud()
    assert drop_floaters(cloud).allclose(cloud)


def test_without_floater_removal_the_floaters_set_the_extent() -> None:
    cloud, _ = _object_with_floaters()
    out = normalize_for_validator(cloud)
    assert len(out) == len(cloud)
    object_extent = np.ptp(out.positions[out.sh_dc[:, 0] == 0.0], axis=0).max()
    assert object_extent < 0.2 * VALIDATOR_MAX_EXTENT


def test_floater_removal_drops_nearly_transparent_gaussians() -> None:
    cloud = _good_cloud()
    logits = cloud.opacity_logits.copy()
    logits[::10] = -8.0  # opacity 0.0003
    out = normalize_for_validator(_with(cloud, opacity_logits=logits), remove_floaters=FloaterFilter(min_opacity=0.01))
    assert len(out) == len(cloud) - len(logits[::10])
    assert out.opacities.min() > 0.01


@pytest.mark.parametrize(
    "cloud",
    [
        GaussianCloud(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 4)), np.zeros(0), np.zeros((0, 3))),
        _with(_random_cloud(), positions=np.where(np.arange(2000)[:, None] == 5, np.nan, _random_cloud().positions)),
        _with(_random_cloud(), log_scales=np.full((2000, 3), np.inf)),
        _with(_random_cloud(), positions=np.ones((2000, 3))),
    ],
    ids=["empty", "nan-position", "inf-scale", "no-extent"],
)
def test_normalise_refuses_unusable_clouds(cloud: GaussianCloud, request) -> None:
    why = {"empty": "the cloud is empty", "nan-position": r"non-finite values \(NaN or inf\) in positions",
           "inf-scale": r"non-finite values \(NaN or inf\) in log_scales",
           "no-extent": "the cloud has no extent to scale"}[request.node.callspec.id]
    with pytest.raises(SplatError, match=why):
        normalize_for_validator(cloud)


@pytest.mark.parametrize("kwargs", [{"frame": "z_up"}, {"max_extent": 0.0}, {"max_extent": np.inf}])
def test_normalise_refuses_bad_arguments(kwargs: dict[str, object]) -> None:
    (name, value), = kwargs.items()
    with pytest.raises(SplatError, match=rf"{name} must .*, got '?{value}'?"):
        normalize_for_validator(_random_cloud(), **kwargs)  # type: ignore[arg-type]


# check_for_validator


def test_a_mesh_made_cloud_passes() -> None:
    verdict = check_for_validator(normalize_for_validator(_good_cloud()))
    assert verdict.ok and verdict.failures == ()
    assert verdict.count == 10_000
    assert verdict.transparent_fraction == 0.0 and verdict.identity_fraction == 0.0
    assert verdict.max_extent == pytest.approx(VALIDATOR_MAX_EXTENT, rel=1e-6)
    np.testing.assert_allclose(verdict.center, 0.0, atol=1e-6)
    summary = json.loads(json.dumps(verdict.to_dict()))
    assert summary["ok"] is True and summary["count"] == 10_000
    assert summary["thresholds"]["min_gaussians"] == 7000


def test_too_few_gaussians_fail() -> None:
    verdict = check_for_validator(_good_cloud().subset(np.arange(6999)))
    assert not verdict.ok
    assert len(verdict.failures) == 1
    assert "min_gaussians" in verdict.failures[0] and "6,999" in verdict.failures[0] and "7,000" in verdict.failures[0]
    assert check_for_validator(_good_cloud().subset(np.arange(7000))).ok


def _with_transparent(fraction: float) -> GaussianCloud:
    cloud = _good_cloud()
    logits = cloud.opacity_logits.copy()
    logits[: round(fraction * len(cloud))] = -7.5  # sigmoid = 0.00055
    return _with(cloud, opacity_logits=logits)


def test_mostly_transparent_fails() -> None:
    verdict = check_for_validator(_with_transparent(0.81))
    assert len(verdict.failures) == 1 and "max_transparent_fraction" in verdict.failures[0]
    assert "81.0%" in verdict.failures[0]
    assert verdict.transparent_count == 8100
    assert verdict.transparent_fraction == pytest.approx(0.81)
    assert check_for_validator(_with_transparent(0.80)).ok


@pytest.mark.parametrize("identity", [[1.0, 0, 0, 0], [-1.0, 0, 0, 0], [3.0, 0, 0, 0], [1.0, 1e-4, 0, 0]])
def test_all_identity_rotations_fail(identity: list[float]) -> None:
    cloud = _good_cloud()
    verdict = check_for_validator(_with(cloud, rotations=np.tile(identity, (len(cloud), 1))))
    assert len(verdict.failures) == 1 and "identity_rotations" in verdict.failures[0]
    assert verdict.identity_fraction == 1.0


def test_one_turned_gaussian_is_enough_for_the_identity_rule() -> None:
    cloud = _good_cloud()
    rotations = np.tile([1.0, 0, 0, 0], (len(cloud), 1))
    rotations[17] = [0.0, 0.0, 1.0, 0.0]
    verdict = check_for_validator(_with(cloud, rotations=rotations))
    assert verdict.ok
    assert verdict.identity_count == len(cloud) - 1


def test_non_finite_values_fail() -> None:
    cloud = _good_cloud()
    logits = cloud.opacity_logits.copy()
    logits[3] = np.nan
    verdict = check_for_validator(_with(cloud, opacity_logits=logits))
    assert len(verdict.failures) == 1 and "finite" in verdict.failures[0] and "opacity_logits" in verdict.failures[0]
    assert verdict.non_finite_fields == ("opacity_logits",)


def test_every_rule_reports_at_once_and_the_verdict_is_frozen() -> None:
    cloud = _good_cloud(7000).subset(np.arange(100))
    positions = cloud.positions.copy()
    positions[0, 0] = np.inf
    broken = _with(
        cloud,
        positions=positions,
        rotations=np.tile([1.0, 0, 0, 0], (100, 1)),
        opacity_logits=np.full(100, -20.0),
    )
    verdict = check_for_validator(broken)
    rules = [failure.split(":")[0] for failure in verdict.failures]
    assert rules == ["min_gaussians", "max_transparent_fraction", "identity_rotations", "finite"]
    assert all(np.isfinite(verdict.extent))
    with pytest.raises(dataclasses.FrozenInstanceError, match=r"cannot assign to field 'count'"):
        verdict.count = 5  # type: ignore[misc]


def test_custom_thresholds() -> None:
    cloud = _good_cloud(7000)
    assert not check_for_validator(cloud, min_gaussians=8000).ok
    assert check_for_validator(_with_transparent(0.81), max_transparent_fraction=0.9).ok
