"""pytest's set-up for the whole suite: megadyt's known third-party warning filters, the CUDA
skip for `gpu` tests, and the fixtures tests share (a distributed state, one tiny trained
run). Shared constants and helper functions are in helpers.py.
"""

from __future__ import annotations

import pytest

from megadyt import warnings_filter


def pytest_configure(config: pytest.Config) -> None:
    # pytest resets warning filters around every test, so the filters megadyt installs when it
    # is imported do not reach the tests; hand pytest the same list (one source of truth).
    for line in warnings_filter.as_pytest_filters():
        config.addinivalue_line("filterwarnings", line)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` are skipped on machines without CUDA (they run on one H100/H200)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One `megadyt train` of the tiny config (helpers.train_tiny: 4 steps, a checkpoint at
    step 4), shared by the tests that need a real run to read and must not change it."""
    from helpers import train_tiny

    return train_tiny(tmp_path_factory.mktemp("tiny-run") / "run")


@pytest.fixture(scope="module")
def tp1_distributed():
    """A single-process TP=1 distributed state for a test module's in-process models."""
    from megadyt.parallel.distributed import destroy_distributed, init_distributed

    init_distributed(tp=1)
    yield
    destroy_distributed()
