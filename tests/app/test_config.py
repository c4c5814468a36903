"""Settings from the environment: the defaults CONTRACT.md names."""
from __future__ import annotations

import pytest

from app.config import Settings

pytestmark = pytest.mark.smoke


@pytest.mark.parametrize("env, in_serve", [
    ({}, True),  # WORKERS=1, the embedded default: serve is the whole system
    ({"WORKERS": "1"}, True),
    ({"WORKERS": "4"}, False),  # several processes: `worker` runs the jobs once
    ({"WORKERS": "4", "SCHEDULER_IN_SERVE": "1"}, True),
    ({"SCHEDULER_IN_SERVE": "0"}, False),
])
def test_scheduler_in_serve_defaults_to_on_with_one_worker(env, in_serve):
    assert Settings.from_env(env).scheduler_in_serve is in_serve
