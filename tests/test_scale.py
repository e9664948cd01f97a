"""Larger-than-memory inputs: zarr stores, bounded memory, a dask.distributed cluster."""

import tracemalloc

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from skimage import data

from napari_kmeanz import kmeans, predict


@pytest.fixture
def zarr_astronaut(tmp_path):
    store = zarr.open_array(
        tmp_path / "astronaut.zarr", mode="w", shape=(512, 512, 3), chunks=(128, 200, 3),
        dtype=np.uint8,
    )  # fmt: skip
    store[:] = data.astronaut()
    return store


@pytest.mark.parametrize("spatial_weight", [0.0, 1.0])
def test_zarr_backed_image_equals_in_memory(zarr_astronaut, tmp_path, spatial_weight):
    lazy = kmeans(da.from_zarr(zarr_astronaut), 6, spatial_weight=spatial_weight, random_state=1)
    eager = kmeans(data.astronaut(), 6, spatial_weight=spatial_weight, random_state=1)
    assert isinstance(lazy.labels, da.Array)
    assert lazy.labels.chunks == ((128, 128, 128, 128), (200, 200, 112))
    # the labels can be written to a zarr store without holding them in memory
    lazy.labels.to_zarr(str(tmp_path / "labels.zarr"))
    written = zarr.open_array(tmp_path / "labels.zarr", mode="r")[:]
    np.testing.assert_array_equal(written, eager.labels)
    np.testing.assert_allclose(lazy.colors, eager.colors, rtol=1e-12)


def test_large_images_keep_only_the_blocks_boxes_with_the_same_result(zarr_astronaut, monkeypatch):
    """Beyond CACHED_PIXELS a run keeps the boxes of blocks, not of every tile, between passes;
    the tiles of the blocks a pass leaves open are found again: the same result."""
    image = da.from_zarr(zarr_astronaut)
    full = kmeans(image, 6, spatial_weight=1.0, random_state=1)
    monkeypatch.setattr("napari_kmeanz._tiles.CACHED_PIXELS", 0)
    lean = kmeans(image, 6, spatial_weight=1.0, random_state=1)
    np.testing.assert_array_equal(lean.labels.compute(), full.labels.compute())
    assert lean.inertia == full.inertia
    np.testing.assert_array_equal(lean.centers, full.centers)


def test_passes_of_delayed_calls_give_what_dask_compute_gives(monkeypatch):
    """Delayed calls on chunks of a lazy array (as every pass makes them) run on dask's
    threads from their merged graphs where no client can exist: the results of dask.compute,
    in order, each chunk read once; with a scheduler configured, dask.compute runs them."""
    from napari_kmeanz import _compute

    # (as in a process that never imported distributed: dask's zarr support, or an earlier
    # test, imports it here)
    monkeypatch.setattr(_compute, "_no_client_yet", lambda: True)
    reads = []

    def read(block):
        reads.append(block.shape)
        return block

    image = da.from_array(data.astronaut(), chunks=(128, 200, 3))
    lazy = image.map_blocks(read, dtype=image.dtype)
    calls = [dask.delayed(np.sum, pure=False)(part) for part in lazy.to_delayed().ravel()]
    calls.append(dask.delayed(len)(calls[:2]))
    expected = dask.compute(*calls, scheduler="sync")
    reads.clear()
    got = _compute.compute(*calls)
    assert isinstance(got, tuple) and list(got) == list(expected)
    assert len(reads) == len(calls) - 1  # each chunk once
    with dask.config.set(scheduler="sync"):
        assert list(_compute.compute(*calls)) == list(expected)


def test_a_zarr_array_is_read_lazily(zarr_astronaut):
    """A zarr array passed as it is (not wrapped by the caller) is read chunk by chunk."""
    result = kmeans(zarr_astronaut, 4, random_state=0)
    assert isinstance(result.labels, da.Array)


def test_memory_stays_bounded_by_the_chunks():
    """16.7 M pixels with position features: a float feature matrix would be 800 MB and a
    coordinate grid 270 MB; the run stays far below by working chunk by chunk."""
    image = da.random.default_rng(0).integers(
        0, 256, size=(4096, 4096, 3), chunks=(512, 1024, 3), dtype=np.uint8
    )
    tracemalloc.start()
    try:
        result = kmeans(image, 8, spatial_weight=1.0, max_iter=2, tol=0, random_state=0)
        result.labels.sum().compute()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 250 * 2**20, f"peak traced memory {peak / 2**20:.0f} MiB"


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as local,
        distributed.Client(local) as client,
    ):
        yield client


@pytest.mark.parametrize("spatial_weight", [0.0, 1.0])
def test_distributed_cluster_gives_the_threaded_result(cluster, spatial_weight):
    distributed = pytest.importorskip("distributed")
    image = da.from_array(data.coffee(), chunks=(100, 300, 3))
    # with the client active, dask sends the work to its worker processes
    with distributed.get_task_stream(cluster) as stream:
        on_cluster = kmeans(image, 5, spatial_weight=spatial_weight, random_state=3)
        labels_on_cluster = on_cluster.labels.compute()
    workers = set(cluster.scheduler_info()["workers"])
    ran = {task["worker"] for task in stream.data}
    assert ran and ran <= workers  # the passes' tasks ran in the worker processes
    assert len(stream.data) >= 4 * 4  # every chunk, in several passes
    with dask.config.set(scheduler="threads"):
        threaded = kmeans(image, 5, spatial_weight=spatial_weight, random_state=3)
        labels_threaded = threaded.labels.compute()
    np.testing.assert_array_equal(labels_on_cluster, labels_threaded)
    np.testing.assert_allclose(on_cluster.centers, threaded.centers, rtol=1e-12)
    np.testing.assert_array_equal(predict(image, on_cluster).compute(), labels_threaded)


@pytest.mark.parametrize("spatial_weight", [0.0, 1.0])
def test_numpy_labels_come_back_whole_from_a_distributed_cluster(cluster, spatial_weight):
    """A numpy image's labels are written chunk by chunk into one array where the tasks run
    in this process; from a cluster's workers the chunks come back and are copied."""
    image = data.coffee()
    on_cluster = kmeans(image, 5, spatial_weight=spatial_weight, random_state=3)
    with dask.config.set(scheduler="threads"):
        threaded = kmeans(image, 5, spatial_weight=spatial_weight, random_state=3)
    assert on_cluster.labels.min() == 1
    np.testing.assert_array_equal(on_cluster.labels, threaded.labels)
    np.testing.assert_array_equal(predict(image, on_cluster), threaded.labels)
