import numpy as np
import pytest
from skimage import data


@pytest.fixture(scope="session")
def astronaut():
    return data.astronaut()


@pytest.fixture(scope="session")
def coffee():
    return data.coffee()


def features(image, result):
    """The feature matrix of an (*spatial, C) image in ``result``'s feature space, for sklearn."""
    space = result.feature_space
    spatial = image.shape[: len(space.spacing)]
    values = image.reshape(-1, space.n_channels).astype(np.float64)
    if not space.n_spatial:
        return values
    grid = np.indices(spatial).reshape(len(spatial), -1).T.astype(np.float64)
    return np.column_stack([grid * space.factor[: space.n_spatial], values])


def same_partition(a, b):
    """True when two labelings split the pixels alike, whatever their ids."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    pairs = np.unique(np.stack([a, b]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
