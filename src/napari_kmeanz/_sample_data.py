"""Sample images that scikit-image ships (no download), to try the plugin offline."""

from __future__ import annotations


def astronaut():
    from skimage import data

    return [(data.astronaut(), {"name": "astronaut", "rgb": True}, "image")]


def immunohistochemistry():
    from skimage import data

    return [(data.immunohistochemistry(), {"name": "immunohistochemistry", "rgb": True}, "image")]


def cells():
    from skimage import data

    return [(data.cell(), {"name": "cells", "colormap": "gray"}, "image")]
