"""The Hypothesis profiles of the suite, and how many examples a property test tries.

``make test`` runs the ``faastwist`` profile: each property test tries the count it asks
for through :func:`examples`. The mutation runner (``.ci/mutate.py``) selects the
``mutate`` profile through :data:`PROFILE_VAR` in the child that tests a mutant: a quarter
of each count (a mutant is caught in the first examples or, as a rule, not at all), the
same examples on every run (a module's score does not change between runs of the same
code) and no shrinking (a failing example is a killed mutant; its minimal form is of no
use there, and shrinking a nested document took seconds per mutant).
"""

from __future__ import annotations

import math
import os

from hypothesis import HealthCheck, Phase, settings

__all__ = ["PROFILE_VAR", "examples", "load_profile"]

#: names the profile; unset: ``faastwist``
PROFILE_VAR = "FAASTWIST_HYPOTHESIS_PROFILE"
#: each profile's share of a test's own example count
_SCALE = {"faastwist": 1.0, "mutate": 0.25}

# Property tests check behaviour, not speed: no per-example deadline, so a loaded machine
# (CI, several suites at once) cannot turn a correct example into a failure.
settings.register_profile("faastwist", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("mutate", parent=settings.get_profile("faastwist"),
                          max_examples=math.ceil(100 * _SCALE["mutate"]), derandomize=True,
                          database=None,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate])


def _profile() -> str:
    name = os.environ.get(PROFILE_VAR, "faastwist")
    if name not in _SCALE:
        raise RuntimeError(f"{PROFILE_VAR}={name!r}: the profiles are {', '.join(_SCALE)}")
    return name


def load_profile() -> None:
    """Load the selected profile (tests/conftest.py, before any test module is imported)."""
    settings.load_profile(_profile())


def examples(count: int) -> int:
    """``max_examples`` for a property test that asks for ``count`` under ``make test``."""
    return max(1, math.ceil(count * _SCALE[_profile()]))
