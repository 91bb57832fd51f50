from tests.support.cluster import cluster  # noqa: F401 (fixture)
