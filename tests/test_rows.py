"""The rows of a chunk's tiles (``_rows``): the compiled gather reads any image's memory,
whatever its dtype, strides, channels, mask or missing values, as the features define them."""

import numpy as np
import pytest
from skimage import data

from napari_kmeanz._color import rgb_to_lab
from napari_kmeanz._features import Chunk, FeatureSpace
from napari_kmeanz._grid import TileGrid
from napari_kmeanz._rows import TileRows, chunk_rows


def expected_rows(block, mask, offset, alpha, space, tiles):
    """The rows of the tiles and which pixels are clustered, pixel by pixel in numpy: the
    tile's pixels where the grid puts them, positions from the offset, values less the
    origin (or as CIE Lab), zeros where a pixel is past the chunk, masked out,
    transparent or not finite."""
    grid = TileGrid.for_shape(block.shape[:-1])
    coords, inside = grid.pixel_coords(tiles)
    picked = block[coords].astype(np.float64)  # (T, pixels, channels)
    valid = inside.copy()
    if mask is not None:
        valid &= mask[coords]
    if alpha:
        valid &= picked[..., -1] > 0
        picked = picked[..., :-1]
    valid &= np.isfinite(picked).all(axis=2)
    if space.color_space == "lab":
        values = rgb_to_lab(np.nan_to_num(picked.reshape(-1, 3)), space.value_top)
        values = values.reshape(picked.shape)
    elif block.dtype.kind in "iu":  # (exactly, in integers)
        values = block[coords][..., : space.n_channels].astype(object) - int(space.origin)
        values = values.astype(np.float64)
    else:
        values = picked - space.origin
    positions = [o + c for o, c in zip(offset, coords, strict=False)][: space.n_spatial]
    ones = np.ones(valid.shape)
    rows = np.stack([*positions, *np.moveaxis(values, 2, 0), ones], axis=1)
    rows[~np.broadcast_to(valid[:, None, :], rows.shape)] = 0.0
    return rows, valid


def noisy(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is None:
        return rng.normal(0, 100, shape).astype(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def packed_field(shape):
    """uint16 values in a field of packed 3-byte records: strides of 3 bytes, not whole
    uint16 elements."""
    records = np.zeros(shape, dtype=[("a", "u1"), ("b", "<u2")])
    records["b"] = noisy(np.uint16, shape)
    return records["b"][..., None]


def with_nan(shape):
    values = noisy(np.float32, shape)
    values[3, 5, 0], values[7, :, 1], values[0, 2, 2] = np.nan, np.inf, -np.inf
    return values


CASES = {
    # name: (block, mask, alpha, spatial_scale, color_space, origin)
    "uint8 RGB": (data.astronaut()[:64, :80], None, False, 0.5, "rgb", 0.0),
    "uint8 RGB, a slice across rows (strided), edge tiles": (
        data.astronaut()[5:100:2, 17:140],
        None,
        False,
        0.5,
        "rgb",
        0.0,
    ),
    "flipped (negative strides)": (
        data.astronaut()[::-1, ::-3][:70, :50],
        None,
        False,
        1.0,
        "rgb",
        0.0,
    ),
    "uint16 grey, strided mask": (
        noisy(np.uint16, (40, 70, 1)),
        (np.indices((40, 140)).sum(0) % 3 > 0)[:, ::2],
        False,
        0.5,
        "rgb",
        0.0,
    ),
    "RGBA, transparent pixels": (
        np.dstack([data.coffee()[:50, :60], (np.arange(3000).reshape(50, 60) % 7) * 40]),
        None,
        True,
        0.5,
        "rgb",
        0.0,
    ),
    "float32, NaN and inf": (with_nan((33, 45, 3)), None, False, 0.5, "rgb", 0.0),
    "float16": (noisy(np.float16, (20, 30, 2)), None, False, 0.5, "rgb", 0.0),
    "int32 far from zero, an origin": (
        (noisy(np.int16, (30, 40, 2)).astype(np.int32) + 2_000_000_000),
        None,
        False,
        0.5,
        "rgb",
        1_999_960_000.0,
    ),
    "int64 past 2^53, an origin": (
        noisy(np.int16, (20, 20, 1)).astype(np.int64) + (1 << 62),
        None,
        False,
        0.0,
        "rgb",
        float((1 << 62) - 40_000),
    ),
    "packed record field": (packed_field((30, 40)), None, False, 0.5, "rgb", 0.0),
    "3-D uint16, no positions": (noisy(np.uint16, (5, 40, 36, 1)), None, False, 0.0, "rgb", 0.0),
    "3-D uint8, positions": (noisy(np.uint8, (9, 20, 30, 2)), None, False, 0.3, "rgb", 0.0),
    "CIE Lab": (data.chelsea()[:40, :60], None, False, 0.5, "lab", 0.0),
}


@pytest.mark.parametrize("narrow", [False, True])
@pytest.mark.parametrize("name", list(CASES))
def test_tile_rows_read_every_kind_of_image_memory(name, narrow, monkeypatch):
    block, mask, alpha, scale, color_space, origin = CASES[name]
    nd = block.ndim - 1
    n_channels = block.shape[-1] - alpha
    space = FeatureSpace((1.0,) * nd, scale, n_channels, color_space, 255.0, origin)
    offset = (64, 3000, 7)[:nd]
    chunk = Chunk(block, mask, offset, alpha)
    grid = TileGrid.for_shape(block.shape[:-1])
    if not narrow:
        monkeypatch.setattr(TileRows, "exact_in_float32", lambda self: False)
    builder = TileRows(grid, chunk, space, 5)
    every = np.arange(grid.n_tiles)
    for tiles in (every[i : i + 5] for i in range(0, grid.n_tiles, 5)):  # (one buffer)
        rows, valid = builder.build(tiles)
        want, want_valid = expected_rows(block, mask, offset, alpha, space, tiles)
        np.testing.assert_array_equal(rows, want)
        if valid is None:
            assert want_valid.all()
        else:
            np.testing.assert_array_equal(valid, want_valid)
            assert not want_valid.all()
    assert builder.buffer.dtype == (np.float32 if builder.exact_in_float32() else np.float64)


def test_chunk_rows_hold_each_clustered_pixel_once():
    block, mask, alpha, *_ = CASES["RGBA, transparent pixels"]
    space = FeatureSpace((1.0, 1.0), 1.0, 3)
    got = list(chunk_rows(Chunk(block, mask, (10, 20), alpha), space))
    rows = np.concatenate([r for r, _ in got])
    coords = np.concatenate([c for _, c in got])
    opaque = np.argwhere(block[..., -1] > 0)
    assert len(rows) == len(opaque)
    order = np.lexsort(coords.T[::-1])
    np.testing.assert_array_equal(coords[order], opaque)
    positions = opaque + np.array([10, 20])
    want = np.column_stack([positions, block[tuple(opaque.T)][:, :3], np.ones(len(opaque))])
    np.testing.assert_array_equal(rows[order], want)


@pytest.mark.parametrize(
    "name", ["float32, NaN and inf", "uint16 grey, strided mask", "uint8 RGB"]
)
def test_tile_boxes_hold_the_clustered_pixels_only(name):
    """The first pass's boxes, sums and squares of each tile (``_tiles._tile_boxes``) are
    those of its clustered pixels' rows: a pixel left out does not widen its tile's box."""
    from napari_kmeanz._tiles import _tile_boxes

    block, mask, alpha, scale, color_space, origin = CASES[name]
    n_channels = block.shape[-1] - alpha
    space = FeatureSpace((1.0, 1.0), scale, n_channels, color_space, 255.0, origin)
    chunk = Chunk(block, mask, (5, 9), alpha)
    grid = TileGrid.for_shape(block.shape[:-1])
    every = np.arange(grid.n_tiles)
    lows, highs, totals, squares = _tile_boxes(TileRows.batches(grid, chunk, space), every,
                                               space.n_features)  # fmt: skip
    rows, valid = expected_rows(block, mask, (5, 9), alpha, space, every)
    raw = rows[:, :-1]
    shown = np.broadcast_to(valid[:, None, :], raw.shape)
    np.testing.assert_array_equal(lows, np.where(shown, raw, np.inf).min(axis=2))
    np.testing.assert_array_equal(highs, np.where(shown, raw, -np.inf).max(axis=2))
    np.testing.assert_allclose(totals, rows.sum(axis=2), rtol=1e-12)
    np.testing.assert_allclose(squares, np.einsum("tfp,tfp->f", raw, raw), rtol=1e-12)
    assert (totals[:, -1] < grid.pixels).any()  # (some tiles hold pixels left out)
