"""The e2e tests' shared fixture: the documentation tours' node, which the template tour
uses too (registered here, not imported into each module: ruff's F811)."""

from tests.e2e.test_doc_tours_e2e import tour_node  # noqa: F401 (fixture)
