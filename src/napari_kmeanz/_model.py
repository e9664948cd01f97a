"""A fitted model as a file: JSON, documented, no pickle.

The file is one JSON object (UTF-8)::

    {
      "format": "napari-kmeanz model",
      "version": 1,
      "centers": [[...], ...],            # k rows of n_features floats (feature space)
      "colors": [[...], ...],             # k rows of C floats (the image's units)
      "counts": [...],                    # k pixel counts of the fit
      "inertia": float, "inertia_history": [...], "n_iter": int, "converged": bool,
      "dtype": "uint8",                   # the dtype fitted on: its value scale
      "layout": {"ndim": 3, "channel_axis": 2, "alpha": false},
      "feature_space": {
        "spacing": [...], "spatial_scale": float, "n_channels": int,
        "color_space": "rgb" | "lab", "value_top": float, "origin": float,
        "filters": null | {"kinds": [...], "sigma": [...], "colour_only": bool},
        "weights": null | [...]
      }
    }

Floats are written with all their digits (Python's ``repr``), so a model read back labels
every image exactly as the one written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ._features import FeatureSpace
from ._filters import Filters
from ._io import atomic
from ._params import Layout

FORMAT = "napari-kmeanz model"
VERSION = 1


def model_dict(fields: dict) -> dict:
    """The JSON object of a model from its fields (those of ``KMeansResult``)."""
    space, layout = fields["feature_space"], fields["layout"]
    filters = space.filters
    return {
        "format": FORMAT,
        "version": VERSION,
        "centers": np.asarray(fields["centers"], np.float64).tolist(),
        "colors": np.asarray(fields["colors"], np.float64).tolist(),
        "counts": [int(c) for c in fields["counts"]],
        "inertia": float(fields["inertia"]),
        "inertia_history": [float(v) for v in fields["inertia_history"]],
        "n_iter": int(fields["n_iter"]),
        "converged": bool(fields["converged"]),
        "dtype": np.dtype(fields["dtype"]).name,
        "layout": {
            "ndim": layout.ndim,
            "channel_axis": layout.channel_axis,
            "alpha": bool(layout.alpha),
        },
        "feature_space": {
            "spacing": list(space.spacing),
            "spatial_scale": float(space.spatial_scale),
            "n_channels": int(space.n_channels),
            "color_space": space.color_space,
            "value_top": float(space.value_top),
            "origin": float(space.origin),
            "filters": None
            if filters is None
            else {
                "kinds": list(filters.kinds),
                "sigma": list(filters.sigma),
                "colour_only": bool(filters.colour_only),
            },
            "weights": None if space.weights is None else list(space.weights),
        },
    }


def write(path, fields: dict) -> None:
    """Write the model to exactly ``path`` (through a temporary file beside it)."""
    path = Path(path)
    if path.is_dir():  # (the temporary file would go beside the folder, the rename fail)
        raise IsADirectoryError(
            f"{str(path)!r} is a folder: give the model a file name (model.kmeanz.json, say)."
        )
    text = json.dumps(model_dict(fields), allow_nan=False)
    with atomic(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def from_dict(document: dict) -> dict:
    """The fields of a model from its JSON object (as :func:`model_dict` makes it)."""
    return _fields(document)


def read(path) -> dict:
    """The fields of the model in the file at ``path``; ValueError for a file that is not
    one (saying what is wrong), OSError when it cannot be read."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a folder: give the model's file.")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not a napari-kmeanz model: {err}.") from None
    try:
        return _fields(document)
    except (KeyError, TypeError, ValueError) as err:
        why = _why(err)
        raise ValueError(f"{str(path)!r} is not a valid napari-kmeanz model: {why}") from None


def _why(err: Exception) -> str:
    if isinstance(err, KeyError):
        return f"it has no {err.args[0]!r}."
    return str(err)


def _fields(document) -> dict:
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"its 'format' is not {FORMAT!r}.")
    if document["version"] != VERSION:
        raise ValueError(
            f"it is of format version {document['version']!r}; this napari-kmeanz reads "
            f"version {VERSION}."
        )
    s = document["feature_space"]
    filters = None if s["filters"] is None else Filters(
        tuple(s["filters"]["kinds"]), tuple(float(v) for v in s["filters"]["sigma"]),
        bool(s["filters"]["colour_only"]),
    )  # fmt: skip
    weights = None if s["weights"] is None else tuple(float(w) for w in s["weights"])
    space = FeatureSpace(
        tuple(float(v) for v in s["spacing"]), float(s["spatial_scale"]), int(s["n_channels"]),
        str(s["color_space"]), float(s["value_top"]), float(s["origin"]), filters, weights,
    )  # fmt: skip
    centers = np.array(document["centers"], dtype=np.float64)
    colors = np.array(document["colors"], dtype=np.float64)
    k = len(centers)
    if centers.ndim != 2 or centers.shape[1] != space.n_features or k == 0:
        raise ValueError(
            f"its centres have shape {centers.shape}, not (k, {space.n_features}) as its "
            "feature space says."
        )
    if colors.shape != (k, space.n_channels) or not np.isfinite(centers).all():
        raise ValueError(f"its colours have shape {colors.shape}, not ({k}, {space.n_channels}).")
    if filters is not None and (weights is None or len(weights) != space.n_values):
        raise ValueError("its feature weights do not match its features.")
    layout = document["layout"]
    axis = layout["channel_axis"]
    return {
        "labels": None,
        "colors": colors,
        "centers": centers,
        "counts": np.array(document["counts"], dtype=np.int64).reshape(k),
        "inertia": float(document["inertia"]),
        "inertia_history": np.array(document["inertia_history"], dtype=np.float64),
        "n_iter": int(document["n_iter"]),
        "converged": bool(document["converged"]),
        "feature_space": space,
        "dtype": np.dtype(document["dtype"]),
        "layout": Layout(
            int(layout["ndim"]), None if axis is None else int(axis), bool(layout["alpha"])
        ),
    }
