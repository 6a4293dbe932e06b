"""Shared test settings: a deterministic hypothesis profile and the ../shared/data fixture."""
import os

import pytest
from hypothesis import settings

settings.register_profile("rsjax", derandomize=True, deadline=None, database=None, max_examples=15)
settings.load_profile("rsjax")


@pytest.fixture
def shared_data():
    """The real datasets directory; tests that need it skip with a reason when it is absent."""
    from rsjax.data.paths import data_dir
    path = data_dir(required=False)
    if path is None:
        pytest.skip("no ../shared/data and no RSJAX_DATA: the real-data test needs the datasets folder")
    return path


@pytest.fixture(autouse=True)
def _no_user_data_env(monkeypatch):
    # Tests decide themselves where data comes from.
    if os.environ.get("RSJAX_DATA") and not os.path.isdir(os.environ["RSJAX_DATA"]):
        monkeypatch.delenv("RSJAX_DATA")
