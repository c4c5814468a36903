from tests.app.domain.metrics_world import world  # noqa: F401  (the metrics fixture)
