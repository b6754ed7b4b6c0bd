"""pagesim's serving model: requests, KV memory managers, batching policies,
cost models, replicas and metrics. Pure Python + numpy; SimPy only in
``sim.driver``."""
