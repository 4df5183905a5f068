"""The control plane: REST API, data model, Temporal client helpers, worker, CLI and `tempered up`."""
