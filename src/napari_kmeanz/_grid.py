"""The tiles of a chunk: compact boxes of pixels, grouped into blocks.

A chunk is cut into *tiles* of about ``TILE_PIXELS`` pixels (16x16 in 2-D), grouped into
*blocks* of about ``BLOCK_PIXELS`` (64x64). :class:`TileGrid` numbers them and moves pixels
between a chunk and per-tile arrays; the passes (``_tiles``) prune centres block by block and
tile by tile.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from ._watch import checkpoint

# Pixels per tile and per block (powers of two; tiles are compact, and a block is whole tiles).
# Measured on a 4096x4096 photo with k=16 and position features: a quarter of the pixels were
# left to read, with 4 candidate centres each on average, where sub-blocks of 32768 pixels
# left four fifths, with 11.
TILE_PIXELS = 1 << 8
BLOCK_PIXELS = 1 << 12
# Pixels moved at a time by :meth:`TileGrid.tile_major` (256 KiB of each float64 column).
TILE_BATCH = 1 << 15


def _power_sides(shape, size: int) -> tuple[int, ...]:
    """Power-of-two sides of a compact tile of at most ``size`` pixels for ``shape``: each side
    starts at the power of two covering the axis, and the longest one is halved until the
    tile is small enough."""
    sides = [1 << max(0, int(n - 1).bit_length()) for n in shape]
    while math.prod(sides) > size:
        longest = int(np.argmax(sides))
        sides[longest] //= 2
    return tuple(sides)


@dataclass(frozen=True, eq=False)
class TileGrid:
    """The tiles of a chunk's spatial shape, numbered block after block.

    Tile ``i`` is tile ``i % per_block`` (C order) of block ``i // per_block`` (C order); its
    first pixel is at ``coords[:, i] * sides``. Tiles at the far edges may reach past the
    chunk (``inside`` is False for them).
    """

    shape: tuple[int, ...]
    sides: tuple[int, ...]  # of a tile
    coords: np.ndarray  # (ndim, n_tiles): each tile's place in the grid of tiles
    inside: np.ndarray  # (n_tiles,) bool: whether the tile lies in the chunk whole
    local: np.ndarray  # (ndim, pixels): the offsets of a tile's pixels, in C order
    per_block: int

    @classmethod
    @functools.lru_cache(maxsize=64)
    def for_shape(cls, shape: tuple[int, ...]) -> TileGrid:
        block = _power_sides(shape, BLOCK_PIXELS)
        sides = _power_sides(block, TILE_PIXELS)
        ratio = [b // s for b, s in zip(block, sides, strict=True)]
        n_blocks = [-(-n // b) for n, b in zip(shape, block, strict=True)]
        block_of = np.indices(n_blocks).reshape(len(shape), -1)
        within = np.indices(ratio).reshape(len(shape), -1)
        ratio_column = np.array(ratio)[:, None, None]
        coords = (block_of[:, :, None] * ratio_column + within[:, None, :]).reshape(len(shape), -1)
        ends = (coords + 1) * np.array(sides)[:, None]
        inside = np.all(ends <= np.array(shape)[:, None], axis=0)
        local = np.indices(sides).reshape(len(shape), -1)
        return cls(tuple(shape), sides, coords, inside, local, math.prod(ratio))

    @property
    def pixels(self) -> int:
        """Pixels per tile."""
        return math.prod(self.sides)

    @property
    def n_tiles(self) -> int:
        return self.coords.shape[1]

    def origins(self, tiles: np.ndarray) -> np.ndarray:
        """The first pixel of each tile, (len(tiles), ndim)."""
        return (self.coords[:, tiles] * np.array(self.sides)[:, None]).T

    def _interior(self, array: np.ndarray) -> np.ndarray:
        """A view of ``array`` (spatial shape, then any trailing axes) as (*tile grid, *sides,
        *trailing) over its whole tiles."""
        nd = len(self.shape)
        counts = [n // s for n, s in zip(self.shape, self.sides, strict=True)]
        region = array[tuple(slice(0, c * s) for c, s in zip(counts, self.sides, strict=True))]
        split = [n for pair in zip(counts, self.sides, strict=True) for n in pair]
        view = region.reshape(*split, *array.shape[nd:])
        order = [*range(0, 2 * nd, 2), *range(1, 2 * nd, 2), *range(2 * nd, view.ndim)]
        return view.transpose(order)

    def pixel_coords(self, tiles: np.ndarray):
        """Per axis, the coordinates (clipped to the chunk) of the tiles' pixels, (T, pixels),
        and which pixels lie in the chunk."""
        origins = self.origins(tiles)
        coords, in_chunk = [], np.ones((len(tiles), self.pixels), dtype=bool)
        for axis, n in enumerate(self.shape):
            along = origins[:, axis, None] + self.local[axis]
            in_chunk &= along < n
            coords.append(np.minimum(along, n - 1))
        return tuple(coords), in_chunk

    def gather(self, array: np.ndarray, tiles: np.ndarray):
        """The tiles' pixels of ``array``: (T, pixels, *trailing), and which of them lie in the
        chunk (None: all of them)."""
        if self.inside[tiles].all():
            picked = self._interior(array)[tuple(self.coords[:, tiles])]
            return picked.reshape(len(tiles), self.pixels, *array.shape[len(self.shape) :]), None
        coords, in_chunk = self.pixel_coords(tiles)
        return array[coords], in_chunk

    def tile_major(self, columns: list[np.ndarray], where: np.ndarray, dtype):
        """``columns`` (F arrays of the spatial shape) laid out tile by tile, (n_tiles, F,
        pixels) of ``dtype`` as the passes' rows are, and ``where`` (spatial shape, bool) as
        (n_tiles, pixels), False for the pixels past the chunk (where a far tile's pixels
        repeat the chunk's last ones)."""
        n, p = self.n_tiles, self.pixels
        out = np.empty((n, len(columns), p), dtype=dtype)
        valid = np.empty((n, p), dtype=bool)
        step = max(1, TILE_BATCH // p)
        for start in range(0, n, step):
            checkpoint()
            tiles = np.arange(start, min(n, start + step))
            part = slice(start, start + len(tiles))
            for f, column in enumerate(columns):
                out[part, f] = self.gather(column, tiles)[0]
            on, in_chunk = self.gather(where, tiles)
            valid[part] = on if in_chunk is None else on & in_chunk
        return out, valid

    @functools.cached_property
    def _numbers(self) -> np.ndarray:
        """Each tile's number, at its place in the grid of tiles."""
        numbers = np.zeros(tuple(self.coords.max(axis=1) + 1), dtype=np.intp)
        numbers[tuple(self.coords)] = np.arange(self.n_tiles)
        return numbers

    def locate(self, local: tuple[np.ndarray, ...]):
        """The tile of each pixel at ``local`` (one array of coordinates per axis), and the
        pixel's place in the tile (C order): its index in a tile-major array."""
        sides = np.array(self.sides)[:, None]
        stacked = np.stack([np.asarray(c, dtype=np.intp) for c in local])
        tiles = self._numbers[tuple(stacked // sides)]
        return tiles, np.ravel_multi_index(tuple(stacked % sides), self.sides)

    def paint(self, out: np.ndarray, tiles: np.ndarray, values: np.ndarray, where=None) -> None:
        """Write ``values`` (per pixel, (T, pixels)) to the tiles' pixels of ``out``, only
        where ``where`` (T, pixels) is true when given."""
        if where is None and self.inside[tiles].all():
            shaped = values.reshape(len(tiles), *self.sides)
            self._interior(out)[tuple(self.coords[:, tiles])] = shaped
            return
        coords, in_chunk = self.pixel_coords(tiles)
        if where is not None:
            in_chunk &= where
        out[tuple(c[in_chunk] for c in coords)] = values[in_chunk]

    def paint_tiles(self, out: np.ndarray, values: np.ndarray) -> None:
        """Write one value per tile (every tile, (n_tiles,)) to all its pixels of ``out``."""
        inside = self.inside
        counts = [n // s for n, s in zip(self.shape, self.sides, strict=True)]
        per_tile = np.zeros(counts, dtype=out.dtype)
        per_tile[tuple(self.coords[:, inside])] = values[inside]
        self._interior(out)[...] = per_tile.reshape(*counts, *((1,) * len(self.shape)))
        edge = np.flatnonzero(~inside)
        if len(edge):
            per_pixel = np.broadcast_to(values[edge, None], (len(edge), self.pixels))
            self.paint(out, edge, per_pixel, np.ones(per_pixel.shape, dtype=bool))
