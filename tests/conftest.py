"""Unit-test set-up: the ``gpu`` marker and small data fixtures (threads: ../conftest.py)."""
import numpy as np
import pytest


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``gpu`` where CUDA is absent (torch is imported only if some are)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: torch.cuda.is_available() is False")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture
def toy_data():
    """A separable 3-class problem shaped like MNIST-1D: x (240, 40) float32, y (240,) int64."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 40)) * 2

    def draw(n):
        y = rng.integers(0, 3, n)
        return (centers[y] + rng.normal(size=(n, 40))).astype(np.float32), y.astype(np.int64)

    (x, y), (x_test, y_test) = draw(240), draw(120)
    return {"x": x, "y": y, "x_test": x_test, "y_test": y_test}
