"""The site's own services in the lab: its DHCP server and its DNS server.

- DHCP is dnsmasq, addresses only, in the site namespace: the ordinary DHCP server every site
  already has. It never says a word about PXE; the boot edge does that (proxyDHCP).
- DNS is BIND 9 with the lab zone in two views (split horizon), each chosen by the TSIG key
  that signs, a key per view: `lab` (the native addresses; also what an unsigned query sees)
  and `corp`, into which Tempered publishes 10.213.0.0/16 mapped to 172.20.0.0/16. BIND listens
  on the host's loopback, where the control plane's worker publishes to it.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from activities.domain.dns import DnsServer, DnsSettings, DnsView, TsigKey
from api.lab import network
from api.lab.state import LabState

ZONE = "lab.tempered.test"
REVERSE = "0.213.10.in-addr.arpa"
MAPPING = ("10.213.0.0/16", "172.20.0.0/16")
CORP_REVERSE = "0.20.172.in-addr.arpa"  # the corp view's PTRs: its mapped addresses' reverse zone


def dnsmasq_binary() -> str | None:
    return shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if Path("/usr/sbin/dnsmasq").exists() else None)


def named_binary() -> str | None:
    return shutil.which("named") or ("/usr/sbin/named" if Path("/usr/sbin/named").exists() else None)


def new_key(name: str, algorithm: str = "hmac-sha256") -> TsigKey:
    return TsigKey(name=name, secret=base64.b64encode(secrets.token_bytes(32)).decode(), algorithm=algorithm)


# ---- DHCP ----------------------------------------------------------------------------------


def start_dhcp(state: LabState) -> None:
    """dnsmasq on the site's eth0: leases from DHCP_RANGE, and an IPv6 RA so iPXE does not wait."""
    binary = dnsmasq_binary()
    first, last = network.DHCP_RANGE
    argv = [
        binary, "--no-daemon", "--conf-file=/dev/null", "--port=0", "--interface=eth0", "--bind-interfaces",
        f"--dhcp-range={first},{last},255.255.255.0,1h", "--no-ping",
        "--enable-ra", "--dhcp-range=fd00:213::,ra-only,64",
        f"--dhcp-leasefile={state.dir / 'site.leases'}", "--pid-file=", "--log-facility=-", "--log-dhcp",
    ]
    proc = network.spawn(state, "site-dhcp", argv, state.dir / "logs" / "site-dhcp.log", netns=network.SITE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the site DHCP server (dnsmasq) exited: see {state.dir / 'logs' / 'site-dhcp.log'}")
        if _udp_bound(network.SITE, 67):
            return
        time.sleep(0.1)
    raise RuntimeError("the site DHCP server (dnsmasq) did not open UDP 67")


def _udp_bound(netns: str, port: int) -> bool:
    shown = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Hlun", f"sport = :{port}"], capture_output=True, text=True)
    return bool(shown.stdout.strip())


# ---- DNS -----------------------------------------------------------------------------------


@dataclass
class View:
    """One view of a BIND: who it matches, which keys may update it, and its zones."""

    name: str
    match: str  # BIND's match-clients list, e.g. 'key "corp";'
    updaters: list[TsigKey]
    zones: tuple[str, ...]


@dataclass
class Named:
    """A BIND 9 in the foreground on a loopback port, with its own directory and views. Zone
    files are created once and kept (with their journals) across restarts."""

    workdir: Path
    port: int
    views: list[View] = field(default_factory=list)
    keys: list[TsigKey] = field(default_factory=list)  # every key the config declares
    address: str = "127.0.0.1"

    @property
    def server(self) -> DnsServer:
        return DnsServer(host=self.address, port=self.port)

    def _zone_file(self, view: str, zone: str, origin: str) -> str:
        path = self.workdir / f"{view}.{zone}.db"
        if not path.exists():
            path.write_text(
                f"$TTL 300\n@ IN SOA ns.{origin}. admin.{origin}. 1 3600 600 86400 300\n@ IN NS ns.{origin}.\n"
                + ("ns IN A 127.0.0.1\n" if zone == origin else "")
            )
        return str(path)

    def _view(self, view: View) -> str:
        allow = " ".join(f'key "{k.name}";' for k in view.updaters)
        origin = view.zones[0]
        zones = "".join(
            f'  zone "{zone}" {{ type primary; file "{self._zone_file(view.name, zone, origin)}"; '
            f"allow-update {{ {allow} }}; }};\n"
            for zone in view.zones
        )
        return f'view "{view.name}" {{\n  match-clients {{ {view.match} }};\n{zones}}};\n'

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        keys = "".join(
            f'key "{k.name}" {{ algorithm {k.algorithm}; secret "{k.secret.get_secret_value()}"; }};\n'
            for k in self.keys
        )
        conf = self.workdir / "named.conf"
        conf.write_text(
            keys
            + "controls { };\n"
            + f'options {{ directory "{self.workdir}"; pid-file "{self.workdir}/named.pid"; '
            f"listen-on port {self.port} {{ {self.address}; }}; listen-on-v6 {{ none; }}; recursion no; "
            "dnssec-validation no; notify no; allow-query { any; }; };\n"
            + "".join(self._view(v) for v in self.views)
        )
        check = subprocess.run(["named-checkconf", str(conf)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"named.conf is invalid: {check.stdout}{check.stderr}")
        return conf

    def argv(self) -> list[str]:
        binary = named_binary()
        if binary is None:
            raise RuntimeError("BIND is not installed: apt-get install bind9")
        return [binary, "-g", "-c", str(self.write_config())]

    def wait_ready(self, zone: str, alive=lambda: True, timeout: float = 30.0) -> None:
        """The port opens before the zones load (updates then get SERVFAIL): wait for the SOA."""
        import dns.exception
        import dns.message
        import dns.query
        import dns.rcode

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not alive():
                raise RuntimeError(f"named exited: see {self.workdir / 'named.log'}")
            try:
                answer = dns.query.udp(dns.message.make_query(zone, "SOA"), self.address, port=self.port, timeout=1)
                if answer.rcode() == dns.rcode.NOERROR and answer.answer:
                    return
            except (OSError, dns.exception.DNSException):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"named did not load {zone} within {timeout:.0f}s")


def lab_named(workdir: Path, port: int, native: TsigKey, corp: TsigKey) -> Named:
    """The lab's BIND: `corp` matched by its key, `lab` for everyone else (its key updates it)."""
    return Named(
        workdir, port, keys=[native, corp],
        views=[
            View("corp", f'key "{corp.name}";', [corp], (ZONE, CORP_REVERSE)),
            View("lab", f'!key "{corp.name}"; any;', [native], (ZONE, REVERSE)),
        ],
    )


def start_dns(state: LabState, port: int) -> DnsSettings:
    """Start the lab's BIND; record its keys; return the DNS settings the cluster uses."""
    keys_file = state.dir / "dns-keys.json"
    if keys_file.exists():  # a restarted lab keeps its keys (the zone files hold their records)
        native, corp = (TsigKey(**k) for k in json.loads(keys_file.read_text()))
    else:
        native, corp = new_key("lab-native", "hmac-sha256"), new_key("lab-corp", "hmac-sha512")
        keys_file.write_text(json.dumps([{**k.model_dump(), "secret": k.secret.get_secret_value()} for k in (native, corp)]))
        keys_file.chmod(0o600)
    named = lab_named(state.dir / "bind", port, native, corp)
    proc = network.spawn(state, "bind", named.argv(), state.dir / "logs" / "named.log")
    named.wait_ready(ZONE, alive=lambda: proc.poll() is None)
    state.dns = {"zone": ZONE, "server": f"127.0.0.1:{port}", "views": "lab (native), corp (mapped to 172.20/16)"}
    state.save()
    return DnsSettings(
        zone=ZONE, servers=[named.server], key=native, reverse_zone=REVERSE, update_default_view=True,
        views=[DnsView(name="corp", key=corp, mappings=[MAPPING], reverse_zone=CORP_REVERSE)],
    )


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Nothing listens on host:port (TCP or UDP)."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            if kind == socket.SOCK_STREAM:  # as servers do: a connection in TIME_WAIT is no listener
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True
