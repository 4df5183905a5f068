"""The edge's configuration from the control plane, kept on disk so that a restarted edge, or
one cut off from the control plane, goes on answering exactly as it last did."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from activities.domain import logfields
from activities.domain.edge import EdgeConfig

log = logging.getLogger("tempered.bootedge.config")


class CachedConfig:
    """The current `EdgeConfig`: replaced whole (atomic for readers), saved on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.current: EdgeConfig | None = None
        if path.exists():
            try:
                self.current = EdgeConfig.model_validate_json(path.read_text())
                logfields.set_process(edge=self.current.name)
                log.info("serving the cached policy from %s until the control plane answers", path)
            except ValueError as err:
                log.error("ignoring the unreadable cache %s: %s", path, err)

    def __call__(self) -> EdgeConfig | None:
        return self.current

    def update(self, config: EdgeConfig) -> None:
        if config == self.current:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(config.model_dump_json(indent=2))
        os.replace(tmp, self.path)
        self.current = config
        logfields.set_process(edge=config.name)
        log.info("policy %s for %d known machines", config.policy.mode, len(config.known_macs))
