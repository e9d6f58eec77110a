"""Segmentation canvases composited from real embedded glyphs, with a per-pixel class map.

How a canvas is built (`make_canvases`):

1. A canvas of `grid x grid` cells of the glyphs' size (8x8 for scikit-learn's
   digits, so 4 x 4 cells make 32 x 32 pixels) starts black (0).
2. `objects` distinct cells are drawn uniformly at random; each gets a glyph
   drawn uniformly from the pool, copied in unchanged (intensities in [0, 1]).
3. The class map is 0 (background) everywhere except on the glyphs' ink:
   pixels with intensity >= `ink_threshold` (0.25, i.e. 4 of 16 grey levels)
   take 1 + the glyph's digit, so there are 11 classes.

Out-of-distribution canvases (`make_ood_canvases`) are built the same way,
except that one of the objects is an out-of-distribution patch (a Fashion-MNIST
test image resized to 8x8); their map marks that patch's ink with 1 and every
other pixel with 0. Pixel-level OOD AUROC then compares the uncertainty of the
OOD patch's ink pixels with that of the digits' ink pixels on the
in-distribution test canvases (background pixels, which every model gets
right with confidence, would make the score meaningless).

The digits come from scikit-learn (embedded), with the digits task's fixed
80/20 split, so training and test canvases never share a glyph.

Example:

>>> import numpy as np
>>> glyphs = np.ones((2, 8, 8, 1), np.float32); digits = np.array([3, 5])
>>> canvases, maps = make_canvases(glyphs, digits, count=1, objects=2, seed=0)
>>> canvases.shape, maps.shape, sorted(set(maps.ravel().tolist()))[0]
((1, 32, 32, 1), (1, 32, 32), 0)
"""

import numpy as np

from rank1_keras import validation

INK_THRESHOLD = 0.25


def _place(count, grid, objects, rng):
    if not 1 <= objects <= grid * grid:
        raise ValueError(f"objects must be in [1, {grid * grid}] for a {grid}x{grid} grid; got objects={objects}.")
    return np.stack([rng.choice(grid * grid, size=objects, replace=False) for _ in range(count)])


def _paste(canvas, patch, cell, grid):
    size = patch.shape[0]
    row, column = divmod(int(cell), grid)
    window = (slice(row * size, (row + 1) * size), slice(column * size, (column + 1) * size))
    canvas[window] = patch
    return window


def make_canvases(glyphs, digits, count, grid=4, objects=3, seed=0, ink_threshold=INK_THRESHOLD):
    """`count` canvases (count, grid*s, grid*s, 1) in [0, 1] and class maps (count, grid*s, grid*s).

    Args:
        glyphs: (N, s, s, 1) images in [0, 1].
        digits: (N,) their classes 0..9 (map classes are 1 + digit; 0 is background).
        count: canvases to make.
        grid: cells per side.
        objects: glyphs per canvas (distinct cells).
        seed: seed of the placement and glyph draws.
        ink_threshold: intensity from which a glyph pixel is labelled as its digit.
    """
    validation.check_positive_int(count, "count")
    glyphs, digits = np.asarray(glyphs, np.float32), np.asarray(digits)
    size = glyphs.shape[1]
    rng = np.random.default_rng(seed)
    cells = _place(count, grid, objects, rng)
    chosen = rng.integers(0, len(glyphs), size=(count, objects))
    canvases = np.zeros((count, grid * size, grid * size, 1), np.float32)
    maps = np.zeros((count, grid * size, grid * size), np.int32)
    for index in range(count):
        for cell, glyph in zip(cells[index], chosen[index]):
            window = _paste(canvases[index, ..., 0], glyphs[glyph, ..., 0], cell, grid)
            maps[index][window] = np.where(glyphs[glyph, ..., 0] >= ink_threshold, 1 + int(digits[glyph]), 0)
    return canvases, maps


def make_ood_canvases(glyphs, ood_patches, count, grid=4, objects=3, seed=0, ink_threshold=INK_THRESHOLD):
    """Canvases with `objects - 1` glyphs and one OOD patch; maps are 1 on the patch's ink, else 0."""
    canvases, _ = make_canvases(glyphs, np.zeros(len(glyphs)), count, grid, objects, seed, ink_threshold)
    ood_patches = np.asarray(ood_patches, np.float32)
    rng = np.random.default_rng(seed + 1)
    size = glyphs.shape[1]
    maps = np.zeros(canvases.shape[:3], np.int32)
    for index in range(count):
        # The patch replaces one of the canvas's glyphs (a non-empty cell).
        occupied = [c for c in range(grid * grid) if canvases[index, (c // grid) * size:(c // grid + 1) * size,
                                                               (c % grid) * size:(c % grid + 1) * size].any()]
        cell = rng.choice(occupied)
        patch = ood_patches[rng.integers(0, len(ood_patches)), ..., 0]
        window = _paste(canvases[index, ..., 0], patch, cell, grid)
        maps[index][window] = (patch >= ink_threshold).astype(np.int32)
    return canvases, maps
