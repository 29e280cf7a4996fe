"""Fixtures of the Python package's tests, run against the installed wheel.

Heavy-backend tests need what the namespace sandbox (or the microVM) needs;
where the machine lacks it they are skipped, unless CELLBOX_REQUIRE_HEAVY=1
(as in CI), where that is a failure.
"""

import os

import pytest

from cellbox import Sandbox, SandboxException


@pytest.fixture
def fast():
    """A sandbox on the WebAssembly fast path only."""
    sandbox = Sandbox.create(backend="wasm")
    yield sandbox
    sandbox.kill()


@pytest.fixture(scope="session")
def heavy_backend():
    """Checks once that the heavy backend starts here (building the guest on first use)."""
    try:
        with Sandbox.create(backend="auto") as probe:
            probe.run_code("import numpy")
            return probe.backend
    except SandboxException as error:
        if os.environ.get("CELLBOX_REQUIRE_HEAVY") == "1":
            pytest.fail(f"the heavy backend must run here (CELLBOX_REQUIRE_HEAVY=1): {error}")
        pytest.skip(f"no heavy backend on this machine: {error}")


@pytest.fixture
def sandbox(heavy_backend):
    """A sandbox that starts on the fast path and moves to the heavy backend when it needs to."""
    sandbox = Sandbox.create()
    yield sandbox
    sandbox.kill()
