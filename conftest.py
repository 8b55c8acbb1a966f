"""Settings of every test, in tests/ and eval/.

The fit cache (:mod:`lafusion_st.fit_cache`) is off: a test must fit what it asserts on rather than read a fit
an earlier run left, and must not write into the user's ``~/.cache/lafusion``. tests/test_fit_cache.py turns
it on, in a temporary folder.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lafusion_st.fit_cache import SWITCH_ENV


@pytest.fixture(autouse=True, scope="session")
def fit_cache_off() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SWITCH_ENV, "off")
        yield
