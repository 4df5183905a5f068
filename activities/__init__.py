"""Activities: thin adapters, one module per outside system (rules sandbox, cloud-init, Ansible,
RFC 2136, the inventory database). Below them, `activities.domain` (pure types and the lifecycle
table) and `activities.storage` (tables, sessions, settings, sealed secrets)."""
