import numpy as np
import pytest

from cudann_ctypes import Cudann


@pytest.fixture(scope="session")
def lib():
    return Cudann()


@pytest.fixture
def rng():
    return np.random.default_rng(20240601)  # fixed: every run sees the same data
