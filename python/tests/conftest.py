"""The suite runs against the *installed* cudann package (bindings-test/run.sh
installs ./python into a temporary --target directory and puts it on PYTHONPATH)."""
import numpy as np
import pytest

import cudann


@pytest.fixture(scope="session")
def raw():
    """The C ABI as declared by the bundled header (for NULL-pointer and size-level checks)."""
    return cudann.raw


@pytest.fixture
def rng():
    return np.random.default_rng(20240601)  # fixed: every run sees the same data


def gpu_backend():
    return cudann.backend().startswith("cuda: ")
