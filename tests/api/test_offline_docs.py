"""/docs and /redoc render with no network: their scripts come from the installed package.

The API, the Temporal dev server its start needs, and a headless Chromium all run in a network
namespace this test creates with only `lo` up: no route leads out, so a page that needs a CDN
renders nothing. What Chromium rendered (its DOM) must hold the operations.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Callable

import pytest

from tests.netlab import Lab, lab_available
from tests.servers import VENV_BIN, temporal_binary

API = "http://127.0.0.1:8000"
TEMPORAL_PORT = "7233"  # inside the namespace: nothing else listens there
# Any http(s) URL that is not this API: a script, style, font or image the page would fetch.
EXTERNAL_URL = re.compile(r"https?://(?!127\.0\.0\.1[:/])[^\s\"'<>)]+")

pytestmark = pytest.mark.skipif(
    lab_available() is not None or shutil.which("chromium") is None,
    reason=f"{lab_available() or 'chromium is missing (apt-get install chromium)'}",
)


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory):
    """A namespace with only loopback, running Temporal and `tempered api`; yields (lab, ns)."""
    work = tmp_path_factory.mktemp("offline-docs")
    lab = Lab()
    try:
        ns = lab.netns("docs")
        temporal = [
            temporal_binary(), "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", TEMPORAL_PORT,
            "--db-filename", str(work / "temporal.db"), "--log-level", "warn",
        ]
        lab.run(ns, temporal, work / "temporal.log")
        env = {
            "PATH": f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
            "TEMPERED_HOME": str(work / "home"),
            "DATABASE_URL": f"sqlite:///{work / 'tempered.db'}",
            "TEMPORAL_ADDRESS": f"127.0.0.1:{TEMPORAL_PORT}",
            "TEMPERED_API": API,
        }
        api = lab.run(ns, [str(VENV_BIN / "tempered"), "api"], work / "api.log", env=env)
        _wait_healthy(lab, ns, api, work / "api.log")
        yield lab, ns, work
    finally:
        lab.close()


def _wait_healthy(lab: Lab, ns: str, api, log: Path, timeout: float = 120.0) -> None:
    """Until /healthz answers 200 inside the namespace (the API waits for Temporal to start)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.poll() is not None:
            raise AssertionError(f"the API exited:\n{log.read_text(errors='replace')[-3000:]}")
        if lab.exec(ns, ["curl", "-sf", "-o", "/dev/null", f"{API}/healthz"], timeout=10).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"the API did not answer in the namespace:\n{log.read_text(errors='replace')[-3000:]}")


def _rendered(lab: Lab, ns: str, work: Path, path: str, ready: Callable[[str], bool]) -> str:
    """The DOM headless Chromium ends with after loading `path`, once `ready(dom)` holds.

    Chromium's virtual time runs the page's scripts without wall-clock waits, but on a loaded
    machine a dump can still come before the page has fetched and rendered its spec: load it
    again, with more virtual time, until the page is rendered (the condition), a few times."""
    dom = ""
    for attempt, budget in enumerate((20_000, 60_000, 120_000, 240_000)):
        profile = work / f"chromium{path.replace('/', '-')}-{attempt}"
        done = lab.exec(
            ns,
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={profile}", f"--virtual-time-budget={budget}", "--dump-dom", f"{API}{path}"],
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        dom = done.stdout
        if ready(dom):
            break
    return dom


def test_the_namespace_has_no_way_out(offline) -> None:
    lab, ns, _ = offline
    for family in ("-4", "-6"):
        routes = lab.exec(ns, ["ip", family, "route", "show", "table", "all"]).stdout
        assert "default" not in routes and all(" dev lo " in line for line in routes.splitlines() if line), routes
    assert [line.split(":")[1].strip() for line in lab.exec(ns, ["ip", "-o", "link"]).stdout.splitlines()] == ["lo"]


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_pages_reference_nothing_outside(offline, path: str) -> None:
    lab, ns, _ = offline
    page = lab.exec(ns, ["curl", "-sf", f"{API}{path}"])
    assert page.returncode == 0 and "<script" in page.stdout
    assert EXTERNAL_URL.findall(page.stdout) == [], page.stdout


def _operations(lab: Lab, ns: str) -> list[tuple[str, str]]:
    """(first tag, operationId) of every operation the API documents."""
    spec = json.loads(lab.exec(ns, ["curl", "-sf", f"{API}/openapi.json"]).stdout)
    return [(op["tags"][0], op["operationId"]) for item in spec["paths"].values() for op in item.values()]


def test_swagger_ui_renders_the_operations_offline(offline) -> None:
    lab, ns, work = offline
    operations = _operations(lab, ns)
    dom = _rendered(lab, ns, work, "/docs", lambda dom: dom.count('class="opblock ') >= len(operations))
    assert dom.count('class="opblock ') == len(operations) > 30, dom[-3000:]
    # Swagger UI's ids: "operations-<tag>-<operationId>", spaces in the tag as underscores
    missing = [op for tag, op in operations if f'id="operations-{tag.replace(" ", "_")}-{op}"' not in dom]
    assert missing == []
    assert 'data-path="/v1/clusters"' in dom
    assert "btn authorize" in dom  # the bearer scheme is declared: Swagger UI offers Authorize


def test_redoc_renders_the_operations_offline(offline) -> None:
    lab, ns, work = offline
    operations = [op for _, op in _operations(lab, ns)]
    dom = _rendered(lab, ns, work, "/redoc", lambda dom: all(f'id="operation/{op}"' in dom for op in operations))
    missing = [op for op in operations if f'id="operation/{op}"' not in dom]
    assert missing == [], dom[-3000:]
    assert "/v1/clusters" in dom
    assert "HTTPBearer" in dom  # ReDoc's Authentication section names the bearer scheme
