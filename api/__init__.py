"""The control plane's edges: the REST API, the Temporal client helpers, the worker process, the
CLI and `tempered up`."""
