"""Typed commands for scripts and other plugins: image data in, labels or image data out."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._kmeans import kmeans

if TYPE_CHECKING:
    import napari


def cluster_labels(
    image: napari.types.ImageData,
    n_clusters: int = 8,
    spatial_weight: float = 0.0,
    seed: int = 0,
) -> napari.types.LabelsData:
    """Cluster the pixels of an image; the cluster of every pixel, 1..k."""
    return kmeans(image, n_clusters, spatial_weight=spatial_weight, random_state=seed).labels


def recolored_image(
    image: napari.types.ImageData,
    n_clusters: int = 8,
    spatial_weight: float = 0.0,
    seed: int = 0,
) -> napari.types.ImageData:
    """The image with every pixel painted in its cluster's mean colour (the input's dtype)."""
    return kmeans(image, n_clusters, spatial_weight=spatial_weight, random_state=seed).recolor()
