"""The marker for tests that need the GraphFrames JVM jars (blocked on this machine, issue 3).

While ``.jars/`` holds no GraphFrames jar, such a test must fail with exactly
``GraphFramesUnavailable`` (strict xfail: passing, or failing any other way,
fails the suite). Once ``make setup`` can fetch the jars it is an ordinary test.
"""

from __future__ import annotations

import pytest

from graph.config import load_config
from graph.session import GraphFramesUnavailable, local_jars


def graphframes_missing() -> bool:
    return not any("graphframes" in p.name for p in local_jars(load_config().spark))


needs_graphframes = pytest.mark.xfail(
    condition=graphframes_missing(),
    raises=GraphFramesUnavailable,
    strict=True,
    reason="BLOCKED (issue 3): Maven Central answers 404 for io.graphframes:graphframes-spark4_2.13; "
    "this test must fail with exactly GraphFramesUnavailable until the jars can be fetched",
)
