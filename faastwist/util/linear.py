"""Regular expressions from specs run on RE2: linear in the input, whatever the pattern.

A spec's ``requestAdaptor.path.regexpReplace`` runs on every request's path, and the
pattern is chosen by whoever deploys the function. Python's ``re`` backtracks: the
pattern ``^/(a+)+$`` against a 33-byte path froze the gate for 8 s. RE2 (Google's, the
engine Go's ``regexp`` follows, which Easegress uses) never backtracks; it refuses what
it cannot run in linear time (backreferences, lookaround), and those patterns are
refused when the spec is read, naming the field.
"""

from __future__ import annotations

from typing import Any

import re2


class PatternError(ValueError):
    """RE2 cannot run this pattern; ``str()`` says why."""


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False   # RE2 would print each refusal to the node's stderr
    return options


_OPTIONS = _options()


def compile_linear(pattern: str) -> Any:
    """The compiled RE2 pattern (``sub``, ``search``, groups as ``re``), or PatternError."""
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise PatternError(f"does not compile on RE2 (linear time, as Go's regexp): "
                           f"{reason}") from None
    except (TypeError, ValueError) as exc:
        raise PatternError(f"does not compile on RE2: {exc}") from None
