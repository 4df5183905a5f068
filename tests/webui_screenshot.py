"""Screenshots of the Temporal Web UI tracking machines, for the README (infra/docs/).

    .venv/bin/python -m tests.webui_screenshot infra/docs

starts a private Temporal dev server with its Web UI (loopback, free ports, a temporary
database), the real workflows on a worker with tests/workflow's fake activities, two clusters
and five machines driven into different states (ready, being admitted, a failed step, on their
way), then has headless Chromium take pictures of the workflow list (with the Tempered search
attributes as columns) and of a machine's and a cluster's User Metadata tab. Everything it
started is stopped by PID. A helper, not a test: pictures are looked at, not asserted on.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from temporalio.client import Client
from temporalio.worker import Worker

from activities.storage import settings as settings_mod
from api import temporal
from api.worker import WORKFLOWS
from tests.servers import free_port, stop, temporal_binary, wait_for_port
from tests.workflow.conftest import FakeMachine, Fakes, FakeSite
from tests.workflow.test_ui_metadata import machine, start_cluster


def start_server(workdir: Path, port: int, ui_port: int) -> subprocess.Popen:
    """tests/servers.py's DevServer is headless: this one serves the Web UI too."""
    with open(workdir / "temporal.log", "ab") as log:
        proc = subprocess.Popen(
            [temporal_binary(), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port),
             "--ui-port", str(ui_port), "--db-filename", str(workdir / "temporal.db"), "--log-level", "warn"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    wait_for_port(port)
    wait_for_port(ui_port)
    return proc


async def populate(site: FakeSite) -> tuple[str, FakeMachine]:
    """Cluster `prod`: a ready master-prime, a machine booting its runtime OS and one whose
    user-data failed to render, while it mints a join token. Cluster `lab`: a machine the
    cluster is admitting (its rules held), one just booted into discovery. Returns the ready
    machine's workflow id and the machine being admitted."""
    prod = await start_cluster(site, site.settings.api_url)
    prime = machine(site, prod)
    site.fakes.mint_join_credentials.hold()  # prod stays "minting a join token" for the picture
    await prime.ansible_to_ready()
    await site.fakes.mint_join_credentials.wait_waiting(1)
    booting = machine(site, prod)
    await booting.discover()
    await booting.wait_state("post-discover")
    await booting.pxe()
    site.fakes.render_user_data.fail(message="template error in fragment 'ntp'", non_retryable=True)
    broken = machine(site, prod)
    await broken.discover()
    await broken.wait_state("failed:render")

    lab = await start_cluster(site, site.settings.api_url)
    site.fakes.evaluate_rules.hold()
    admitting = machine(site, lab)
    await admitting.discover()
    await site.fakes.evaluate_rules.wait_waiting(1)
    fresh = machine(site, lab)
    await fresh.pxe()
    return prime.handle.id, admitting


def names() -> Callable[[str], str]:
    """Clusters `prod` then `lab`; machines by UUID, as identity.machine_id names most."""
    clusters = iter(["prod", "lab"])
    return lambda prefix: next(clusters) if prefix == "c" else str(uuid.uuid4())


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
    NUL-terminated JSON on fds 3 and 4), so no driver library is needed. A page's localStorage
    can be set this way, which is where the Web UI keeps the columns of its workflow list."""

    def __init__(self, workdir: Path) -> None:
        to_browser, self._to_browser = os.pipe()
        self._from_browser, from_browser = os.pipe()

        def fds() -> None:  # in the child: the pipe ends Chromium expects on fds 3 and 4
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        self.proc = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--remote-debugging-pipe",
             f"--user-data-dir={workdir / 'chromium'}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, preexec_fn=fds,
            close_fds=False,  # (Python's own fds are not inheritable; closing would take 3 and 4 too)
        )
        os.close(to_browser)
        os.close(from_browser)
        self._ids = itertools.count(1)
        self._buffer = b""
        target = self.call("Target.getTargets")["targetInfos"]
        page = next(t["targetId"] for t in target if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page, flatten=True)["sessionId"]

    def call(self, method: str, session: str | None = None, **params: Any) -> dict:
        """One DevTools command; its result (events that arrive meanwhile are dropped)."""
        message_id = next(self._ids)
        message = {"id": message_id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed its DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == message_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def page(self, method: str, **params: Any) -> dict:
        return self.call(method, session=self.session, **params)

    def evaluate(self, expression: str) -> Any:
        return self.page("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def open(self, url: str, shows: str, size: tuple[int, int] = (1400, 700), timeout: float = 60.0) -> None:
        """Go to `url` in a window of `size` and wait until the page's text, or the text of
        one of its frames (the Web UI renders Markdown in one), contains `shows`."""
        self.page("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1, mobile=False)
        self.page("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while not self.evaluate(SHOWS % json.dumps(shows)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} never showed {shows!r}")
            time.sleep(0.2)

    def screenshot(self, out: Path) -> None:
        out.write_bytes(base64.b64decode(self.page("Page.captureScreenshot", format="png")["data"]))
        print(f"wrote {out}")

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, OSError):
            self.call("Browser.close")
        stop(self.proc)
        os.close(self._to_browser)
        os.close(self._from_browser)


SHOWS = """[document, ...[...document.querySelectorAll('iframe')].map(f => f.contentDocument)]
    .some(d => d && d.body && d.body.innerText.includes(%s))"""

# The workflow list's columns: the workflow id and the Tempered search attributes.
COLUMNS = ["Workflow ID", "TemperedState", "TemperedCluster", "TemperedRole", "TemperedMac"]


def pictures(ui_url: str, namespace: str, pages: dict[str, str], outdir: Path, workdir: Path) -> None:
    """The list with the Tempered columns, then each workflow's User Metadata tab (`pages`:
    file name -> workflow id/run id)."""
    chromium = Chromium(workdir)
    try:
        workflows = f"{ui_url}/namespaces/{namespace}/workflows"
        chromium.open(workflows, "Workflows")
        columns = {namespace: [{"label": label} for label in COLUMNS]}
        chromium.evaluate(f"localStorage.setItem('namespace-workflow-table-columns', {json.dumps(json.dumps(columns))})")
        chromium.open(workflows, "failed:render", size=(1600, 700))
        chromium.screenshot(outdir / "webui-machines.png")
        for name, page in pages.items():
            chromium.open(f"{workflows}/{page}/user-metadata", "API", size=(1400, 820))
            chromium.screenshot(outdir / name)
    finally:
        chromium.close()


async def page_of(client: Client, workflow_id: str) -> str:
    run = (await client.get_workflow_handle(workflow_id).describe()).run_id
    return f"{quote(workflow_id)}/{run}"


async def main(outdir: Path) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tempered-webui-") as tmp:
        workdir = Path(tmp)
        port, ui_port = free_port(), free_port()
        server = start_server(workdir, port, ui_port)
        try:
            settings = replace(settings_mod.load(), temporal_address=f"127.0.0.1:{port}")
            client = await temporal.connect(settings)
            await temporal.ensure_search_attributes(client)
            fakes = Fakes()
            async with Worker(client, task_queue="tempered-screenshot", workflows=WORKFLOWS,
                              activities=fakes.activities()):
                site = FakeSite(client, settings, "tempered-screenshot", fakes, names())
                ready_id, admitting = await populate(site)
                pages = {"webui-machine.png": await page_of(client, ready_id),
                         "webui-cluster.png": await page_of(client, "cluster:prod")}
                await asyncio.to_thread(pictures, f"http://127.0.0.1:{ui_port}", "default", pages, outdir, workdir)
                fakes.evaluate_rules.release()  # the admission and the minting end before the worker does
                fakes.mint_join_credentials.release()
                await admitting.wait_state("post-discover")
        finally:
            stop(server)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1] if len(sys.argv) > 1 else "infra/docs")))
