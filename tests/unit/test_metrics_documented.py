"""Every metric a Tempered process exports is listed in README "## Metrics", so an operator
building dashboards from the README finds all of them (and none that does not exist)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
METRIC_MODULES = ["api/metrics.py", "api/worker_metrics.py", "bootedge/metrics.py", "activities/metrics.py"]
NAME = re.compile(r"\btempered_[a-z_]+\b")


def _exported(name: str, source: str) -> str:
    """The name as scraped: prometheus-client adds `_total` to a Counter's name."""
    counter = re.search(rf'Counter(MetricFamily)?\(\s*"{name}"', source)
    return name if name.endswith("_total") or not counter else name + "_total"


def _documented() -> set[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Metrics", 1)[1].split("\n## ", 1)[0]
    return set(NAME.findall(section))


def test_every_exported_metric_is_in_the_readme():
    exported = set()
    for module in METRIC_MODULES:
        source = (REPO / module).read_text()
        exported |= {_exported(name, source) for name in re.findall(r'"(tempered_[a-z_]+)"', source)}
    assert exported, "no metric names found: the modules moved?"
    documented = _documented()
    assert not exported - documented, f"exported but not in README ## Metrics: {sorted(exported - documented)}"
    suffixes = ("_bucket", "_count", "_sum")
    invented = {n for n in documented - exported if not n.endswith(suffixes)}
    assert not invented, f"in README ## Metrics but not exported: {sorted(invented)}"
