"""The kernels, through the engine's one internal interface (``_engine``): pruning is
exact, sums are exact, tiles cover a chunk once, passes over tiles and cells equal plain ones."""

import dask.array as da
import numpy as np
import pytest
from skimage import data

from napari_kmeanz import _engine as engine


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
    expected, d2 = brute_force(raw, centers, factor)
    got = engine.PointSource(raw).nearest_and_stats(centers, factor)[0]
    # identical, except where two centres are equally near up to rounding
    best = d2[np.arange(len(d2)), expected]
    differs = got != expected
    assert np.allclose(d2[differs, got[differs]], best[differs], rtol=1e-12)
    assert differs.mean() < 1e-4


def test_ties_and_duplicate_centres():
    raw = np.array([[0.0], [1.0], [2.0], [3.0]])
    centers = np.array([[1.0], [1.0], [3.0]])  # a duplicate, and pixel 2 halfway to two centres
    labels = engine.PointSource(raw).nearest_and_stats(centers, np.ones(1))[0]
    np.testing.assert_array_equal(labels, [0, 0, 0, 2])  # ties go to the lowest index


@pytest.mark.parametrize("k", [2, 12, 50, 300])  # 300: the points put in Z-order first
def test_pass_sums_are_exact_for_integer_data(k):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 4096, size=(200_000, 4)).astype(np.float64)
    centers = raw[:k].copy()
    points = engine.PointSource(raw)
    labels, counts, sums = points.nearest_and_stats(centers, np.ones(4))
    np.testing.assert_array_equal(labels, brute_force(raw, centers, np.ones(4))[0])
    np.testing.assert_array_equal(counts, np.bincount(labels, minlength=k))
    for f in range(4):
        exact = np.zeros(k, dtype=np.int64)
        np.add.at(exact, labels, raw[:, f].astype(np.int64))
        np.testing.assert_array_equal(sums[:, f], exact)
    # without labels, the same sums
    counts_only, sums_only = points.stats(centers, np.ones(4))
    np.testing.assert_array_equal(counts_only, counts)
    np.testing.assert_array_equal(sums_only, sums)


@pytest.mark.parametrize("weighted", [False, True])
def test_a_tie_goes_to_the_first_centre_in_every_sub_block(weighted):
    # integer points halfway between two integer centres: exact ties, in some sub-blocks only
    # (each value fills sub-blocks of its own: 4096 points)
    raw = np.repeat(np.arange(9.0), 4096)[:, None]
    raw[raw[:, 0] == 4.0] = 3.0  # the sub-blocks of this value have no tie
    centers = np.array([[1.0], [3.0], [5.0], [7.0]])  # 2, 4 (none left) and 6 are ties
    multiplicity = np.arange(len(raw)) % 3 + 1.0
    points = engine.PointSource(raw, multiplicity if weighted else None)
    labels = np.digitize(raw[:, 0], [2.5, 4.5, 6.5])  # 2 -> 0, 6 -> 2: the lower index
    w = multiplicity if weighted else np.ones(len(raw))
    got, *with_labels = points.nearest_and_stats(centers, np.ones(1))
    np.testing.assert_array_equal(got, labels)
    for counts, sums in (with_labels, points.stats(centers, np.ones(1))):
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
    coder = engine.ColorCodes.for_range(np.array(low), np.array(high))
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
    np.testing.assert_array_equal(keys, morton_keys(colours - np.array(low), coder.span))


def morton_keys(offsets, span):
    """Z-order keys by hand: each channel's bits of ``offsets`` interleaved from the lowest
    (a channel with fewer bits drops out once they run out)."""
    bits = [max(0, int(n - 1).bit_length()) for n in span]
    keys, position = np.zeros(len(offsets), np.int64), 0
    for bit in range(max(bits)):
        for channel, n_bits in enumerate(bits):
            if bit < n_bits:
                keys |= ((offsets[:, channel].astype(np.int64) >> bit) & 1) << position
                position += 1
    return keys


def test_rgb_bytes_read_as_codes_equal_the_arithmetic():
    coder = engine.ColorCodes.for_range(np.zeros(3), np.full(3, 255))
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


def test_z_order_runs_through_compact_cubes():
    coder = engine.ColorCodes.for_range(np.zeros(3), np.full(3, 255))
    grid = np.stack(np.meshgrid(*[np.arange(32)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    codes = coder.encode(grid, np.empty(len(grid), np.int32), np.empty(len(grid), np.int64))
    ordered, _, _ = coder.z_ordered(codes)
    for cube in np.split(coder.decode(ordered), 8):  # keys sharing key >> 12: side-16 cubes
        assert np.all(cube.max(axis=0) - cube.min(axis=0) == 15)
        assert np.all(cube.min(axis=0) % 16 == 0)


def _clustered(block, mask, alpha):
    """Channel values (n, C) of a chunk's pixels and which of them are clustered, by hand."""
    flat = block.reshape(-1, block.shape[-1])
    valid = np.ones(len(flat), bool) if mask is None else mask.ravel().astype(bool)
    if alpha:
        valid &= flat[:, -1] > 0
        flat = flat[:, :-1]
    if flat.dtype.kind == "f":
        valid &= np.isfinite(flat).all(axis=1)
    return flat, valid


def _raw_rows(block, offset, space, values):
    """Raw rows (coordinates in the image, then values) of every pixel of a chunk."""
    shape = block.shape[:-1]
    coords = np.indices(shape).reshape(len(shape), -1).T + np.array(offset)
    return coords, np.column_stack([coords[:, : space.n_spatial], values]).astype(np.float64)


def _plain_pass(block, mask, offset, space, alpha, centers):
    """Labels (1 + nearest centre, 0 where not clustered), counts and raw sums, from every
    pixel's distance to every centre (the first nearest one on ties)."""
    values, valid = _clustered(block, mask, alpha)
    _, raw = _raw_rows(block, offset, space, values)
    labels = np.zeros(len(raw), np.intp)
    k = len(centers)
    nearest = engine.accumulate(
        engine.with_ones(raw[valid]),
        centers,
        space.factor,
        np.zeros(k),
        np.zeros((k, len(raw[0]))),
        block=len(raw),
        candidates_of=np.arange(k),
    )
    labels[valid] = nearest + 1
    counts = np.bincount(nearest, minlength=k).astype(np.float64)
    sums = np.stack([np.bincount(nearest, raw[valid, f], k) for f in range(raw.shape[1])], 1)
    return labels.reshape(block.shape[:-1]), counts, sums


def _pixels_at(block, mask, offset, alpha, space):
    """The pixels of an image whose chunk at ``offset`` is ``block`` (every pixel before it
    masked out), and that chunk's place."""
    region = tuple(slice(o, o + n) for o, n in zip(offset, block.shape[:-1], strict=True))
    if not any(offset):
        data = da.from_array(block, chunks=-1)
        return engine.PixelSource(data, None if mask is None else da.from_array(mask), alpha,
                                  space), region  # fmt: skip
    shape = tuple(s.stop for s in region)
    image = np.zeros((*shape, block.shape[-1]), block.dtype)
    image[region] = block
    selected = np.zeros(shape, bool)
    selected[region] = True if mask is None else mask
    chunks = tuple((o, n) if o else (n,) for o, n in zip(offset, block.shape[:-1], strict=True))
    data = da.from_array(image, chunks=(*chunks, -1))
    return engine.PixelSource(data, da.from_array(selected, chunks=chunks), alpha, space), region


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
        # 12 features: the boxes' candidates are also narrowed pair by pair (PAIR_FROM)
        "10 channels": (_ten_channels(), None, (0, 0), (1.0, 1.0), 0.4, False),
    }


def _ten_channels():
    ihc = data.immunohistochemistry()[:200, :300]
    shifted = [np.roll(ihc, (3 * i, 5 * i), (0, 1)) for i in range(4)]
    return np.concatenate(shifted, axis=-1)[..., :10]


@pytest.mark.parametrize("case", list(_tile_cases()))
@pytest.mark.parametrize("k", [12, 50, 300])
@pytest.mark.parametrize("cache_tiles", [True, False])
def test_tiled_passes_equal_plain_passes(case, k, cache_tiles, monkeypatch):
    """Tiles and blocks given whole to one centre from their boxes, the rest read in
    batches: the same labels, counts and raw sums as every pixel against every centre; with
    every tile's box kept between passes, and with the blocks' only (the tiles found again
    in each pass, as for images beyond ``CACHED_PIXELS``)."""
    from napari_kmeanz import _tiles

    if not cache_tiles:
        monkeypatch.setattr("napari_kmeanz._tiles.CACHED_PIXELS", 0)
    if k == 300:  # tiles past REFINE_FROM candidates in every case, narrowed
        monkeypatch.setattr(_tiles, "REFINE_FROM", 16)
    narrowings = []  # (the kernel itself runs: this only counts its calls)
    kernel = _tiles._narrowed
    monkeypatch.setattr(_tiles, "_narrowed", lambda *a: (narrowings.append(1), kernel(*a)))
    block, mask, offset, spacing, scale, alpha = _tile_cases()[case]
    space = engine.FeatureSpace(spacing, scale, block.shape[-1] - alpha)
    rng = np.random.default_rng(k)
    values, valid = _clustered(block, mask, alpha)
    picks = rng.choice(np.flatnonzero(valid), k, replace=False)
    _, raw = _raw_rows(block, offset, space, values)
    # centres near pixels, not on them: a pixel as far from two pixels as each other (a tie
    # in exact arithmetic) goes to the one the products' rounding favours, which depends on
    # their shapes (exact ties are the next test's)
    centers = raw[picks] * space.factor + rng.uniform(-0.25, 0.25, (k, raw.shape[1]))
    expected_labels, counts, sums = _plain_pass(block, mask, offset, space, alpha, centers)
    pixels, region = _pixels_at(block, mask, offset, alpha, space)
    for _ in range(2):  # the first pass finds the tiles' boxes, the second starts from them
        got = pixels.stats(centers, space.factor)
        np.testing.assert_array_equal(got[0], counts)
        np.testing.assert_array_equal(got[1], sums)
    labels, *got = pixels.labels_and_stats(centers, np.uint16)
    np.testing.assert_array_equal(labels[region], expected_labels)
    np.testing.assert_array_equal(got[0], counts)
    np.testing.assert_array_equal(got[1], sums)
    np.testing.assert_array_equal(pixels.labels(centers, np.uint16).compute(), labels)
    assert narrowings or k != 300
    # the sum of squares of the clustered pixels' raw rows (for the inertia)
    expected_sq = float((raw[valid] ** 2).sum(0) @ space.factor**2)
    np.testing.assert_allclose(pixels.sq_total(space.factor), expected_sq, rtol=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
def test_the_kernel_weighs_each_group_against_its_own_candidates(weighted):
    """nearest_sums, group by group: each point goes to the nearest of its group's
    candidates (the first on ties, duplicates included), a group with no candidate adds
    nothing, the sums are of ``summed`` point by point, and centre ids need not be small."""
    from napari_kmeanz import _kernels

    rng = np.random.default_rng(3)
    groups, d, n, k = 5, 3, 300, 40_000
    rows = np.ones((groups, d + 1, n))
    rows[:, :-1] = rng.integers(0, 8, (groups, d, n))
    rows[1, :, :7] = 0.0  # points not clustered: zero rows weigh nothing
    summed = rows * rng.integers(1, 5, (groups, 1, n)) if weighted else rows
    centers = rng.integers(0, 8, (k, d)).astype(np.float64)
    lists = [rng.choice(k, m, replace=False) for m in (1, 2, 7, 0, 30)]
    centers[lists[4][:10]] = centers[lists[4][10:20]]  # duplicates: exact ties
    lists = [np.sort(ids) for ids in lists]
    weights = _kernels.distance_weights(centers, np.ones(d))
    ids = np.concatenate(lists).astype(np.intp)
    counts = np.array([len(ids) for ids in lists], dtype=np.intp)
    starts = (np.cumsum(counts) - counts, counts)
    totals, labels = np.zeros((k, d + 1)), np.full((groups, n), -1, dtype=np.intp)
    _kernels.nearest_sums(rows, summed, weights, ids, *starts, totals, labels)
    expected = np.zeros((k, d + 1))
    for g, chosen in enumerate(lists):
        if not len(chosen):
            assert (labels[g] == -1).all()  # left as they were
            continue
        d2 = ((rows[g, :-1].T[:, None] - centers[chosen][None]) ** 2).sum(-1)
        nearest = chosen[d2.argmin(axis=1)]  # argmin: the first (lowest id) on ties
        clustered = rows[g, -1] == 1  # (the others' labels are painted over by no one)
        np.testing.assert_array_equal(labels[g][clustered], nearest[clustered])
        np.add.at(expected, nearest, summed[g].T)
    np.testing.assert_array_equal(totals, expected)
    # without labels, the same sums; a caller's wrong dtype is refused, not compiled anew
    again = np.zeros((k, d + 1))
    _kernels.nearest_sums(rows, summed, weights, ids, *starts, again)
    np.testing.assert_array_equal(again, expected)
    with pytest.raises(TypeError):
        _kernels.nearest_sums(rows, summed, weights, ids.astype(np.int16), *starts, again)


def test_tiles_narrowed_by_their_pixels_keep_every_centre_nearest_to_one():
    """A tile across an edge (two tight groups of pixels at opposite corners of its box)
    keeps, once narrowed by its own pixels, every candidate nearest to one of its clustered
    pixels, and fewer than its box kept; a tile with no clustered pixel keeps all."""
    from napari_kmeanz import _kernels
    from napari_kmeanz._prune import box_lists
    from napari_kmeanz._tiles import _narrowed

    rng = np.random.default_rng(4)
    d, n, k = 3, 256, 200
    centers = rng.uniform(0, 100, (k, d))
    rows = np.ones((2, d + 1, n))
    rows[:, :d, : n // 2] = rng.normal(35, 1, (2, d, n // 2))
    rows[:, :d, n // 2 :] = rng.normal(65, 1, (2, d, n - n // 2))
    valid = np.ones((2, n), bool)
    valid[1] = False
    valid[0, ::7] = False  # some pixels not clustered: they bound nothing
    factor = np.ones(d)
    weights = _kernels.distance_weights(centers, factor)
    ids = np.arange(k, dtype=np.intp)
    firsts, counts = np.zeros(2, np.intp), np.full(2, k, np.intp)
    keep, kept = np.zeros(k, bool), np.empty(2, np.intp)
    scale = float((centers**2).sum(1).max())
    _narrowed(rows[:1], valid[:1], factor, weights, centers, ids, firsts[:1], counts[:1],
              scale, 8, keep, kept[:1])  # fmt: skip
    pixels = rows[0, :d].T[valid[0]]
    nearest = np.unique(((pixels[:, None] - centers[None]) ** 2).sum(-1).argmin(1))
    assert keep[nearest].all()
    one = np.zeros(1, np.intp)
    by_box = box_lists(
        pixels.min(0)[None], pixels.max(0)[None], centers, factor, ids, one, one + k
    )
    assert kept[0] == keep.sum() < by_box.counts[0]
    keep[:] = False
    _narrowed(rows[1:], valid[1:], factor, weights, centers, ids, firsts[1:], counts[1:],
              scale, 8, keep, kept[1:])  # fmt: skip
    assert keep.all() and kept[1] == k


def test_pair_narrowing_keeps_every_centre_nearest_to_a_point_of_the_box():
    """Narrowed against the candidate nearest the box's middle, a box keeps every centre
    that is nearest to some point of it (its corners and points inside, checked), and drops
    some the box test kept (across a diagonal, the box test keeps both sides' centres)."""
    from napari_kmeanz._prune import PAIR_FROM, _box_lists, box_candidate_lists

    rng = np.random.default_rng(5)
    d, k, n_boxes = 12, 9, 300
    assert d >= PAIR_FROM
    centers = rng.normal(0, 3, (k, d))
    factor = rng.uniform(0.5, 2.0, d)
    middle = rng.normal(0, 3, (n_boxes, d)) / factor
    half = rng.uniform(0.05, 1.5, (n_boxes, d)) / factor
    lows, highs = middle - half, middle + half
    narrowed = box_candidate_lists(lows, highs, centers, factor)
    # the box test alone
    ids, firsts, counts = np.arange(k), np.zeros(n_boxes, np.intp), np.full(n_boxes, k)
    box_ids, box_counts = np.empty(n_boxes * k, np.intp), np.empty(n_boxes, np.intp)
    scale = float((centers**2).sum(1).max())
    _box_lists(lows, highs, centers, factor, ids, firsts, counts, scale, False, box_ids,
               box_counts)  # fmt: skip
    assert narrowed.counts.sum() < 0.8 * box_counts.sum()  # it narrows
    assert (narrowed.counts >= 1).all() and (narrowed.counts <= box_counts).all()
    corners = rng.integers(0, 2, (64, d)).astype(bool)
    inside = rng.uniform(0, 1, (64, d))
    for b in range(n_boxes):
        points = np.concatenate([np.where(corners, highs[b], lows[b]),
                                 lows[b] + inside * (highs[b] - lows[b])])  # fmt: skip
        nearest = np.unique(((points[:, None] * factor - centers) ** 2).sum(2).argmin(1))
        kept = narrowed.ids[narrowed.starts[b] : narrowed.starts[b] + narrowed.counts[b]]
        assert set(nearest) <= set(kept.tolist())


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
    space = engine.FeatureSpace(spacing, scale, block.shape[-1] - alpha)
    values, valid = _clustered(block, mask, alpha)
    coords, raw = _raw_rows(block, offset, space, values)
    coords, raw = coords[valid], raw[valid]
    centers = raw[:: len(raw) // 7][:7] * space.factor
    dist = engine.nearest_sqdist(engine.with_ones(raw), centers, space.factor)
    top = np.lexsort((*coords.T[::-1], -dist))[:40]
    pixels, _ = _pixels_at(block, mask, offset, alpha, space)
    got = pixels.farthest(centers, space.factor, 40)
    np.testing.assert_allclose(got[0], dist[top], rtol=1e-12)
    np.testing.assert_array_equal(got[1], raw[top])


@pytest.mark.parametrize("many", [False, True])
def test_tiled_pass_gives_a_tie_to_the_first_centre(many):
    """Pixels halfway between two centres (exact in floating point) take the first one; with
    ``many``, every pixel is a tie and each tile has dozens of candidates."""
    image = np.tile(np.arange(0, 40, 2, dtype=np.uint8), (32, 3))[..., None]  # 32 x 60
    space = engine.FeatureSpace((1.0, 1.0), 0.0, 1)
    centers = np.array([[9.0], [11.0], [29.0], [31.0]])  # 10 and 30 are ties
    if many:
        image = np.tile(np.arange(2, 82, 2, dtype=np.uint8), (32, 2))[..., None]  # 32 x 80
        centers = np.arange(1.0, 82.0, 2.0)[:, None]  # 41 centres, every pixel a tie
    expected = _plain_pass(image, None, (0, 0), space, False, centers)
    assert np.isin([10, 30], image).all()
    pixels, _ = _pixels_at(image, None, (0, 0), False, space)
    for got in (pixels.stats(centers, space.factor), pixels.stats(centers, space.factor)):
        np.testing.assert_array_equal(got[0], expected[1])
        np.testing.assert_array_equal(got[1], expected[2])
    labels, counts, sums = pixels.labels_and_stats(centers, np.uint8)
    np.testing.assert_array_equal(labels, expected[0])
    np.testing.assert_array_equal(counts, expected[1])
    np.testing.assert_array_equal(sums, expected[2])


@pytest.mark.parametrize("shape", [(300, 407), (20, 90, 130), (5000,), (7, 5), (1, 1000)])
def test_tile_grid_covers_each_pixel_once(shape):
    grid = engine.TileGrid.for_shape(shape)
    covered = np.zeros(shape, dtype=int)
    coords, in_chunk = grid.pixel_coords(np.arange(grid.n_tiles))
    np.add.at(covered, tuple(c[in_chunk] for c in coords), 1)
    assert np.all(covered == 1)
    assert grid.pixels <= 256  # 16x16 in 2-D
    # tile numbers run block by block: a block's tiles are consecutive
    out = np.zeros(shape, dtype=np.int64)
    grid.paint_tiles(out, np.arange(grid.n_tiles) // grid.per_block)
    for block in np.unique(out):
        where = np.argwhere(out == block)
        extent = where.max(0) - where.min(0) + 1
        assert np.prod(extent) == len(where) <= 4096  # 64x64 in 2-D


@pytest.mark.parametrize(
    ("name", "chunks", "masked"),
    [
        ("camera", 32, False),  # 256 chunks, each counted into a table, summed in a tree
        ("camera", ((500, 12), (510, 2), 1), False),  # tables, and sorted codes in small chunks
        ("astronaut", (64, 64, 3), True),  # sorted codes; some chunks all masked out
        ("astronaut", ((500, 12), 512, 3), False),  # chunks of different sizes
        ("astronaut", 512, True),  # one chunk, sorted and counted in slabs, masked
        ("chelsea", 512, False),  # slabs merged, whole tiles
    ],
)
def test_colour_histogram_counts_every_pixel(name, chunks, masked, monkeypatch):
    monkeypatch.setattr("napari_kmeanz._codes.HISTOGRAM_SLAB", 1 << 15)  # a tile's codes each
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
    coder = engine.ColorCodes.for_range(np.zeros(n_channels), np.full(n_channels, 255))
    codes, counts = engine.PixelSource(pixels, mask, False).histogram(coder)
    assert np.all(np.diff(codes) > 0)  # sorted, distinct
    expected, expected_counts = np.unique(values, axis=0, return_counts=True)
    order = np.lexsort(expected.T[::-1])
    got = coder.decode(codes)
    got_order = np.lexsort(got.T[::-1])
    np.testing.assert_array_equal(got[got_order], expected[order])
    np.testing.assert_array_equal(counts[got_order], expected_counts[order])


def test_no_color_codes_beyond_the_largest_histogram():
    assert engine.ColorCodes.for_range(np.zeros(3), [256, 255, 255]) is None  # 2**24 + 2**16
    assert engine.ColorCodes.for_range(np.zeros(3), [255, 255, 255]).size == 1 << 24


@pytest.mark.parametrize("k", [3, 16])
def test_passes_over_colour_cells_equal_full_passes(k):
    """Distinct colours in Z-order cells, given whole to one centre: the same labels and sums."""
    image = data.chelsea()
    coder = engine.ColorCodes.for_range(np.zeros(3), np.full(3, 255))
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
    plain = engine.PointSource(colours, weights)
    celled = engine.PointSource(colours, weights, keys, (12, 9, 6))
    expected = plain.nearest_and_stats(centers, factor)
    got = celled.nearest_and_stats(centers, factor)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(celled.stats(centers, factor)[0], expected[1])


def test_lazy_outputs_read_the_image_chunks_without_copying_them():
    """Each task of a lazy output (labels, margins, the colour lookup) gets its chunk as a
    view of the image: dask's map_blocks with the channel axis dropped handed every task a
    concatenated copy of its chunk (36 MiB a chunk of a 4096x6144 photo)."""
    from napari_kmeanz._params import Layout, channels_last

    image = data.astronaut()
    pixels = engine.PixelSource(channels_last(image, Layout(3, 2, False)), None, False)
    views = []

    def task(chunk):
        views.append(np.shares_memory(chunk.block, image))
        return np.zeros(chunk.shape, np.uint8)

    out = pixels._lazy(task, np.uint8)
    assert out.shape == image.shape[:2]
    np.testing.assert_array_equal(out.compute(scheduler="sync"), 0)
    assert views == [True] * pixels.data.numblocks[0]


def test_the_distance_to_the_nearest_of_many_centres_a_few_rows_at_a_time():
    """nearest_sqdist (rows in cache-sized steps) against every distance at once."""
    from napari_kmeanz import _kernels

    rng = np.random.default_rng(0)
    rows = engine.with_ones(rng.integers(0, 6, (5000, 3)).astype(np.float64))
    centers = rng.integers(0, 6, (400, 3)).astype(np.float64)
    assert len(rows) > _kernels.MANY_DISTANCES // len(centers)  # several steps
    plain = ((rows[:, None, :-1] - centers[None]) ** 2).sum(-1).min(1)
    np.testing.assert_allclose(engine.nearest_sqdist(rows, centers, np.ones(3)), plain)


@pytest.mark.parametrize("weighted", [False, True])
def test_a_pass_over_points_on_several_threads_gives_the_same_floats(weighted):
    """Sub-blocks shared between threads: their sums are added in the sub-blocks' order, so
    float sums (and the labels) come out bit for bit as on one thread."""
    rng = np.random.default_rng(0)
    n, k = 20_000, 700  # many sub-blocks, many centres
    rows = engine.with_ones(rng.random((n, 5)))
    weights = rng.integers(1, 9, n).astype(np.float64) if weighted else None
    summed = None if weights is None else rows * weights[:, None]
    centers, factor = rng.random((k, 5)), np.ones(5)
    out = []
    for threads in (1, 3):
        counts, sums = np.zeros(k), np.zeros((k, 5))
        labels = engine.accumulate(rows, centers, factor, counts, sums, summed, 1024,
                                   threads=threads)  # fmt: skip
        out.append((labels, counts, sums))
    for one, several in zip(out[0], out[1], strict=True):
        np.testing.assert_array_equal(one, several)
    brute = ((rows[:, None, :-1] - centers[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(out[0][0], brute)


def greedy_plusplus(x, weights, k, rng):
    """k-means++ as scikit-learn's, every distance computed: the same draws as the kernel's
    (the first centre by ``rng.choice``, then one ``rng.random`` call for every step's
    candidates), each drawn where the running sum of weight times distance reaches it."""
    n_trials = 2 + int(np.log(k))
    chosen = [rng.choice(len(x), p=weights / weights.sum())]
    draws = rng.random((k - 1, n_trials))
    closest = ((x - x[chosen[0]]) ** 2).sum(1)
    for step in range(k - 1):
        cumulative = np.cumsum(weights * closest)
        picks = np.searchsorted(cumulative, draws[step] * cumulative[-1])
        trials = np.minimum(closest, ((x[None] - x[picks][:, None]) ** 2).sum(-1))
        best = int(np.argmin(trials @ weights))
        chosen.append(picks[best])
        closest = trials[best]
    return x[chosen]


@pytest.mark.parametrize("block", [None, 7])
@pytest.mark.parametrize("k", [1, 12, 300])
def test_kmeans_plusplus_skips_only_blocks_a_candidate_cannot_change(k, block, monkeypatch):
    """The seeding skips a block whose box is farther from a candidate than all its points'
    distances: on integer points (every distance and sum exact, whatever the blocks) it
    draws exactly the centres every distance computed draws, the points held in Z-order
    (as the kernel holds them), with weights, some 0 (never drawn)."""
    from napari_kmeanz import _plusplus

    if block is not None:
        monkeypatch.setattr(_plusplus, "BLOCK_POINTS", block)
    image = data.astronaut()[::4, ::4]
    yy, xx = np.indices(image.shape[:2])
    x = np.column_stack([yy.ravel(), xx.ravel(), image.reshape(-1, 3)]).astype(np.float64)
    x = x[np.argsort(engine.z_order_keys(x.T), kind="stable")]  # the kernel's own order
    weights = np.random.default_rng(1).integers(0, 4, len(x)).astype(np.float64)
    found = engine.kmeans_plusplus(x, weights, k, np.random.default_rng(0))
    np.testing.assert_array_equal(found, greedy_plusplus(x, weights, k, np.random.default_rng(0)))
    held = {tuple(p) for p in x[weights > 0]}
    assert all(tuple(c) in held for c in found)


def test_kmeans_plusplus_with_fewer_distinct_points_than_clusters():
    x = np.repeat(np.array([[0.0, 0.0], [1.0, 2.0], [5.0, 5.0]]), 50, axis=0)
    with pytest.raises(ValueError, match="3"):
        engine.kmeans_plusplus(x, np.ones(len(x)), 5, np.random.default_rng(0))


@pytest.mark.parametrize("weighted", [False, True])
def test_points_kept_laid_out_between_passes(weighted):
    """Points in memory keep their sub-blocks laid out for the kernel from one pass to the
    next, and lay them out again once put in Z-order (the first pass with 200 centres or
    more): every pass, with other centres each time, finds what every distance computed
    finds."""
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 60, (9000, 4)).astype(np.float64)
    weights = rng.integers(1, 5, len(raw)).astype(np.float64) if weighted else None
    source, factor = engine.PointSource(raw, weights), np.array([1.0, 0.5, 2.0, 1.0])
    w = np.ones(len(raw)) if weights is None else weights
    for trial, k in enumerate([7, 7, 250, 250, 7]):
        centers = raw[rng.choice(len(raw), k, replace=False)] * factor + trial
        labels, counts, sums = source.nearest_and_stats(centers, factor)
        expected, _ = brute_force(raw, centers, factor)
        np.testing.assert_array_equal(labels, expected)
        np.testing.assert_array_equal(counts, np.bincount(expected, w, minlength=k))
        for f in range(raw.shape[1]):
            np.testing.assert_array_equal(sums[:, f], np.bincount(expected, w * raw[:, f], k))
