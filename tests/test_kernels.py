"""The numpy kernels: pruning is exact, sums are exact, tiles cover a chunk once."""

import dask.array as da
import numpy as np
import pytest
from skimage import data

from napari_kmeanz import _lloyd, _pixels, _tiles


def brute_force(raw, centers, factor):
    d2 = (((raw * factor)[:, None, :] - centers[None]) ** 2).sum(axis=2)
    return d2.argmin(axis=1), d2


@pytest.mark.parametrize("k", [2, 5, 16, 50])
def test_pruned_assignment_equals_brute_force(k):
    image = data.astronaut()[:256, :256]
    yy, xx = np.indices(image.shape[:2])
    raw = np.column_stack([yy.ravel(), xx.ravel(), image.reshape(-1, 3)]).astype(np.float64)
    factor = np.array([0.5, 0.5, 1.0, 1.0, 1.0])
    rng = np.random.default_rng(k)
    centers = (raw[rng.choice(len(raw), k, replace=False)] * factor) + rng.normal(0, 3, (k, 5))
    rows1 = _lloyd.with_ones(raw)
    expected, d2 = brute_force(raw, centers, factor)
    got = _lloyd.accumulate(rows1, centers, factor, np.zeros(k), np.zeros((k, 5)))
    # identical, except where two centres are equally near up to rounding
    best = d2[np.arange(len(d2)), expected]
    differs = got != expected
    assert np.allclose(d2[differs, got[differs]], best[differs], rtol=1e-12)
    assert differs.mean() < 1e-4


def test_ties_and_duplicate_centres():
    raw = np.array([[0.0], [1.0], [2.0], [3.0]])
    centers = np.array([[1.0], [1.0], [3.0]])  # a duplicate, and pixel 2 halfway to two centres
    labels = _lloyd.accumulate(
        _lloyd.with_ones(raw), centers, np.ones(1), np.zeros(3), np.zeros((3, 1))
    )
    np.testing.assert_array_equal(labels, [0, 0, 0, 2])  # ties go to the lowest index


@pytest.mark.parametrize("k", [2, 12, 50])  # one-hot products (k <= ONE_HOT_MAX) and bincount
def test_accumulate_sums_are_exact_for_integer_data(k):
    assert 12 <= _lloyd.ONE_HOT_MAX < 50
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 4096, size=(200_000, 4)).astype(np.float64)
    centers = raw[:k].copy()
    counts, sums = np.zeros(k), np.zeros((k, 4))
    labels = _lloyd.accumulate(_lloyd.with_ones(raw), centers, np.ones(4), counts, sums)
    np.testing.assert_array_equal(labels, brute_force(raw, centers, np.ones(4))[0])
    np.testing.assert_array_equal(counts, np.bincount(labels, minlength=k))
    for f in range(4):
        exact = np.zeros(k, dtype=np.int64)
        np.add.at(exact, labels, raw[:, f].astype(np.int64))
        np.testing.assert_array_equal(sums[:, f], exact)
    # without labels (the minimum found with no argmin), the same sums
    counts_only, sums_only = np.zeros(k), np.zeros((k, 4))
    kept = _lloyd.accumulate(
        _lloyd.with_ones(raw), centers, np.ones(4), counts_only, sums_only, want_labels=False
    )
    assert kept is None
    np.testing.assert_array_equal(counts_only, counts)
    np.testing.assert_array_equal(sums_only, sums)


@pytest.mark.parametrize("weighted", [False, True])
def test_one_hot_sums_give_a_tie_to_the_first_centre(weighted):
    # integer points halfway between two integer centres: exact ties, in some sub-blocks only
    raw = np.repeat(np.arange(9.0), 1000)[:, None]
    raw[raw[:, 0] == 4.0] = 3.0  # the sub-blocks of this value have no tie
    centers = np.array([[1.0], [3.0], [5.0], [7.0]])  # 2, 4 (none left) and 6 are ties
    rows1 = _lloyd.with_ones(raw)
    multiplicity = np.arange(len(raw)) % 3 + 1.0
    weighted_rows = rows1 * multiplicity[:, None] if weighted else None
    labels = np.digitize(raw[:, 0], [2.5, 4.5, 6.5])  # 2 -> 0, 6 -> 2: the lower index
    w = multiplicity if weighted else np.ones(len(raw))
    for want_labels in (False, True):
        counts, sums = np.zeros(4), np.zeros((4, 1))
        got = _lloyd.accumulate(
            rows1, centers, np.ones(1), counts, sums, weighted_rows, 500, None, want_labels
        )
        if want_labels:
            np.testing.assert_array_equal(got, labels)
        np.testing.assert_array_equal(counts, np.bincount(labels, weights=w, minlength=4))
        np.testing.assert_array_equal(sums[:, 0], np.bincount(labels, weights=w * raw[:, 0]))


@pytest.mark.parametrize(
    ("low", "high"),
    [
        ([0, 0, 0], [255, 255, 255]),  # 8-bit RGB: 2**24 codes
        ([-128], [127]),  # signed grey
        ([3, 5], [300, 17]),
        ([0, 0, 0], [299, 299, 149]),  # 13.5 M colours (26 bits)
    ],
)
def test_color_codes_round_trip(low, high):
    coder = _pixels.ColorCodes.for_range(np.array(low), np.array(high))
    values = np.random.default_rng(0).integers(low, np.array(high) + 1, size=(5000, len(low)))
    codes = coder.encode(values, np.empty(len(values), np.int32), np.empty(len(values), np.int64))
    assert codes.min() >= 0 and codes.max() < coder.size
    np.testing.assert_array_equal(coder.decode(codes), values)
    distinct, where = np.unique(codes, return_index=True)
    assert len(distinct) == len(np.unique(values, axis=0))
    # Z-order: sorted keys, the same colours, and distinct colours have distinct keys
    ordered, keys, order = coder.z_ordered(distinct)
    assert np.all(np.diff(keys) > 0)
    np.testing.assert_array_equal(ordered, distinct[order])
    colours = coder.decode(ordered)
    np.testing.assert_array_equal(colours, values[where][order])
    np.testing.assert_array_equal(keys, coder.morton_keys(colours))


def test_rgb_bytes_read_as_codes_equal_the_arithmetic():
    coder = _pixels.ColorCodes.for_range(np.zeros(3), np.full(3, 255))
    rgb = data.astronaut().reshape(-1, 3)
    rgba = np.concatenate([rgb, np.full((len(rgb), 1), 7, np.uint8)], axis=1)
    wide = rgb.astype(np.int64)
    expected = wide[:, 0] + 256 * wide[:, 1] + 65536 * wide[:, 2]
    layouts = {
        "rgb": (rgb, expected),  # 3 bytes apart: the last pixel's 4th byte is past the array
        "rgba": (rgba[:, :3], expected),  # 4 bytes apart, alpha masked off
        "every other": (rgb[::2], expected[::2]),  # 6 bytes apart: by arithmetic
        "one pixel": (rgb[-1:], expected[-1:]),
    }
    for name, (values, codes) in layouts.items():
        out = np.empty(len(values), np.int32)
        got = coder.encode(values, out, np.empty(len(values), np.int64))
        np.testing.assert_array_equal(got, codes, err_msg=name)
    assert _pixels._bytes_as_codes(rgb, np.empty(len(rgb), np.int32))
    assert not _pixels._bytes_as_codes(rgb[::2], np.empty(len(rgb[::2]), np.int32))


def test_morton_keys_run_through_compact_cubes():
    coder = _pixels.ColorCodes.for_range(np.zeros(3), np.full(3, 255))
    grid = np.stack(np.meshgrid(*[np.arange(32)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    keys = coder.morton_keys(grid)
    order = np.argsort(keys)
    for cube in np.split(grid[order], 8):  # the keys sharing key >> 12: cubes of side 16
        assert np.all(cube.max(axis=0) - cube.min(axis=0) == 15)
        assert np.all(cube.min(axis=0) % 16 == 0)


def _plain_pass(block, mask, offset, space, alpha, centers):
    """Labels (1 + nearest centre, 0 where not clustered), counts and raw sums, from every
    pixel's distance to every centre (the first nearest one on ties)."""
    values, valid = _tiles.chunk_values(block, mask, alpha)
    shape = block.shape[:-1]
    coords = np.indices(shape).reshape(len(shape), -1).T + np.array(offset)
    raw = np.column_stack([coords[:, : space.n_spatial], values]).astype(np.float64)
    valid = np.ones(len(raw), bool) if valid is None else valid
    labels = np.zeros(len(raw), np.intp)
    k = len(centers)
    rows1 = _lloyd.with_ones(raw[valid])
    nearest = _lloyd.accumulate(
        rows1,
        centers,
        space.factor,
        np.zeros(k),
        np.zeros((k, len(raw[0]))),
        block=len(raw),
        keep=np.arange(k),
    )
    labels[valid] = nearest + 1
    counts = np.bincount(nearest, minlength=k).astype(np.float64)
    sums = np.stack([np.bincount(nearest, raw[valid, f], k) for f in range(raw.shape[1])], 1)
    return labels.reshape(shape), counts, sums


def _tile_cases():
    coffee = data.coffee()[:300, :407]  # edges: 407 is not a whole number of tiles
    yy, xx = np.indices(coffee.shape[:2])
    disc = (yy - 150) ** 2 + (xx - 200) ** 2 < 120**2
    rgba = np.concatenate([coffee, np.where(disc, 255, 0).astype(np.uint8)[..., None]], 2)
    grey = data.camera()[::4, ::4].astype(np.float64)
    grey[40:60, 10:90] = np.nan
    stack = np.stack([np.roll(data.camera()[:90, :130], 3 * z, 1) for z in range(20)])
    return {
        "rgb": (coffee, None, (0, 0), (1.0, 1.0), 0.6, False),
        "rgb masked, offset": (coffee, disc, (512, 64), (1.0, 1.0), 0.6, False),
        "rgba": (rgba, None, (0, 0), (1.0, 1.0), 0.6, True),
        "colour only": (coffee, None, (0, 0), (1.0, 1.0), 0.0, False),
        "float with NaN": (grey[..., None], None, (0, 0), (1.0, 1.0), 0.3, False),
        "3-D, anisotropic": (stack[..., None], None, (40, 0, 0), (3.0, 1.0, 1.0), 0.5, False),
    }


@pytest.mark.parametrize("case", list(_tile_cases()))
@pytest.mark.parametrize("k", [12, 50])
def test_tiled_passes_equal_plain_passes(case, k):
    """Tiles and blocks given whole to one centre from their boxes, the rest read in padded
    batches: the same labels, counts and raw sums as every pixel against every centre."""
    block, mask, offset, spacing, scale, alpha = _tile_cases()[case]
    n_channels = block.shape[-1] - alpha
    space = _pixels.FeatureSpace(spacing, scale, n_channels)
    rng = np.random.default_rng(k)
    values, valid = _tiles.chunk_values(block, mask, alpha)
    n = len(values)
    picks = rng.choice(np.arange(n) if valid is None else np.flatnonzero(valid), k, replace=False)
    coords = np.array(np.unravel_index(picks, block.shape[:-1])).T + np.array(offset)
    centers = np.column_stack([coords[:, : space.n_spatial], values[picks]]) * space.factor
    expected_labels, counts, sums = _plain_pass(block, mask, offset, space, alpha, centers)
    tiles = _tiles.record(block, mask, offset, space, alpha)
    # with the tiles' boxes kept, and with the blocks' only (the tiles found in each pass)
    for kept in (tiles, _tiles.record(block, mask, offset, space, alpha, keep_tiles=False)):
        got = _tiles.chunk_pass(block, mask, offset, space, alpha, centers, kept)
        np.testing.assert_array_equal(got[0], counts)
        np.testing.assert_array_equal(got[1], sums)
        labelled = _tiles.chunk_pass(block, mask, offset, space, alpha, centers, kept, np.uint8)
        np.testing.assert_array_equal(labelled[2], expected_labels)
        np.testing.assert_array_equal(labelled[0], counts)
        np.testing.assert_array_equal(labelled[1], sums)
    # the tiles' sums of squares: those of the clustered pixels' raw rows
    raw = np.column_stack([np.indices(block.shape[:-1]).reshape(block.ndim - 1, -1).T
                           + np.array(offset), values])[:, -space.n_features :]  # fmt: skip
    raw = raw if valid is None else raw[valid]
    np.testing.assert_allclose(tiles.squares, (raw.astype(np.float64) ** 2).sum(0), rtol=1e-12)
    if k == 12 and case != "float with NaN":  # some tiles (and blocks) whole, others read
        blocks = (level[:1] for level in tiles.levels[:3])
        d = space.n_features
        split = (centers, space.factor, np.zeros(k), np.zeros((k, d)), False)
        open_blocks = _lloyd.split_cells(*blocks, (), *split)[0]
        open_tiles = _lloyd.split_cells(*tiles.levels, *split)[0]
        assert 0 < len(open_tiles) < len(tiles.tiles)
        if case in ("rgb masked, offset", "3-D, anisotropic"):
            assert 0 < len(open_blocks) < len(tiles.levels[0][0])


@pytest.mark.parametrize("case", ["rgb masked, offset", "3-D, anisotropic", "rgba", "grey"])
def test_farthest_pixels_of_a_chunk(case):
    """The pixels farthest from their nearest centre (for empty clusters), read tile by tile:
    those of every pixel's distance, ties to the first position."""
    if case == "grey":  # colour only, few grey levels: many pixels equally far, at the cut too
        block, mask, offset, spacing, scale, alpha = (
            data.camera()[:150, :170, None] // 64,
            None,
            (30, 0),
            (1.0, 1.0),
            0.0,
            False,
        )
    else:
        block, mask, offset, spacing, scale, alpha = _tile_cases()[case]
    space = _pixels.FeatureSpace(spacing, scale, block.shape[-1] - alpha)
    values, valid = _tiles.chunk_values(block, mask, alpha)
    shape = block.shape[:-1]
    coords = np.indices(shape).reshape(len(shape), -1).T + np.array(offset)
    raw = np.column_stack([coords[:, : space.n_spatial], values]).astype(np.float64)
    if valid is not None:
        coords, raw = coords[valid], raw[valid]
    centers = raw[:: len(raw) // 7][:7] * space.factor
    dist = _lloyd.nearest_sqdist(_lloyd.with_ones(raw), centers, space.factor)
    top = np.lexsort((*coords.T[::-1], -dist))[:40]
    got = _pixels._farthest_task(block, mask, offset, space, alpha, centers, 40)
    np.testing.assert_allclose(got[0], dist[top], rtol=1e-12)
    np.testing.assert_array_equal(got[1], coords[top])
    np.testing.assert_array_equal(got[2], raw[top])


def test_tiled_pass_gives_a_tie_to_the_first_centre():
    """Pixels halfway between two centres (exact in floating point) take the first one."""
    image = np.tile(np.arange(0, 40, 2, dtype=np.uint8), (32, 3))[..., None]  # 32 x 60
    space = _pixels.FeatureSpace((1.0, 1.0), 0.0, 1)
    centers = np.array([[9.0], [11.0], [29.0], [31.0]])  # 10 and 30 are ties
    tiles = _tiles.record(image, None, (0, 0), space, False)
    expected = _plain_pass(image, None, (0, 0), space, False, centers)
    assert np.isin([10, 30], image).all()
    for dtype in (None, np.uint8):
        got = _tiles.chunk_pass(image, None, (0, 0), space, False, centers, tiles, dtype)
        np.testing.assert_array_equal(got[0], expected[1])
        np.testing.assert_array_equal(got[1], expected[2])
        if dtype is not None:
            np.testing.assert_array_equal(got[2], expected[0])


@pytest.mark.parametrize("shape", [(300, 407), (20, 90, 130), (5000,), (7, 5), (1, 1000)])
def test_tile_grid_covers_each_pixel_once(shape):
    grid = _tiles.TileGrid.for_shape(shape)
    covered = np.zeros(shape, dtype=int)
    _, in_chunk = grid._pixel_coords(np.arange(grid.n_tiles))
    coords, _ = grid._pixel_coords(np.arange(grid.n_tiles))
    np.add.at(covered, tuple(c[in_chunk] for c in coords), 1)
    assert np.all(covered == 1)
    assert grid.pixels <= _tiles.TILE_PIXELS
    # tile numbers run block by block: a block's tiles are consecutive
    out = np.zeros(shape, dtype=np.int64)
    grid.paint_tiles(out, np.arange(grid.n_tiles) // grid.per_block)
    for block in np.unique(out):
        where = np.argwhere(out == block)
        extent = where.max(0) - where.min(0) + 1
        assert np.prod(extent) == len(where) <= _tiles.BLOCK_PIXELS


@pytest.mark.parametrize(
    ("name", "chunks", "masked"),
    [
        ("camera", 32, False),  # 256 chunks, each counted into a table, summed in a tree
        ("camera", ((500, 12), (510, 2), 1), False),  # tables, and sorted codes in small chunks
        ("astronaut", (64, 64, 3), True),  # sorted codes; some chunks all masked out
        ("astronaut", ((500, 12), 512, 3), False),  # chunks of different sizes
    ],
)
def test_colour_histogram_counts_every_pixel(name, chunks, masked):
    image = getattr(data, name)()
    values = image.reshape(-1, image.shape[-1] if image.ndim == 3 else 1).astype(np.int64)
    pixels = da.from_array(image if image.ndim == 3 else image[..., None], chunks=chunks)
    mask = None
    if masked:
        mask = np.zeros(image.shape[:2], bool)
        mask[100:300, 70:400] = True
        values = values[mask.ravel()]
        mask = da.from_array(mask, chunks=pixels.chunks[:2])
    n_channels = values.shape[1]
    coder = _pixels.ColorCodes.for_range(np.zeros(n_channels), np.full(n_channels, 255))
    codes, counts = _pixels.PixelSource(pixels, mask, False).histogram(coder)
    assert np.all(np.diff(codes) > 0)  # sorted, distinct
    expected, expected_counts = np.unique(values, axis=0, return_counts=True)
    order = np.lexsort(expected.T[::-1])
    got = coder.decode(codes)
    got_order = np.lexsort(got.T[::-1])
    np.testing.assert_array_equal(got[got_order], expected[order])
    np.testing.assert_array_equal(counts[got_order], expected_counts[order])


def test_no_color_codes_beyond_the_largest_histogram():
    assert _pixels.ColorCodes.for_range(np.zeros(3), [256, 255, 255]) is None  # 2**24 + 2**16
    assert _pixels.ColorCodes.for_range(np.zeros(3), [255, 255, 255]).size == 1 << 24


@pytest.mark.parametrize("k", [3, 16])
def test_passes_over_colour_cells_equal_full_passes(k):
    """Distinct colours in Z-order cells, given whole to one centre: the same labels and sums."""
    image = data.chelsea()
    coder = _pixels.ColorCodes.for_range(np.zeros(3), np.full(3, 255))
    flat = image.reshape(-1, 3)
    codes = coder.encode(flat, np.empty(len(flat), np.int32), np.empty(len(flat), np.int64))
    counts = np.bincount(codes, minlength=coder.size)
    present = np.flatnonzero(counts)
    ordered, keys, order = coder.z_ordered(present)
    colours = coder.decode(ordered)
    colours, weights = colours.astype(np.float64), counts[present[order]].astype(np.float64)
    rng = np.random.default_rng(k)
    centers = colours[rng.choice(len(colours), k, replace=False)] + rng.normal(0, 2, (k, 3))
    factor = np.ones(3)
    plain = _lloyd.PointSource(colours, weights)
    celled = _lloyd.PointSource(colours, weights, keys, (12, 9, 6))
    expected = plain.labels_and_stats(centers, factor)
    got = celled.labels_and_stats(centers, factor)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(celled.stats(centers, factor)[0], expected[1])
    # some cells went whole to one centre (at more than one level), not all
    open_cells, owner_of = celled._cells.split(
        centers, factor, np.zeros(k), np.zeros((k, 3)), True
    )
    assert 0 < len(open_cells) < len(owner_of)
    assert len(celled._cells.starts[0]) < (owner_of >= 0).sum()
