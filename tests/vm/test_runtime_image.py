"""The runtime image: build it with mmdebstrap, look inside, then boot it in QEMU from HTTP.

The image is built once per module (the .debs are kept in pytest's cache directory, or
$TEMPERED_IMAGE_CACHE, across runs). The smoke boot proves the design without the rest of the
stack: in private network namespaces, a "server" namespace runs dnsmasq (addresses only) and an
HTTP server with the image files, a NoCloud seed and a phone-home endpoint; the VM boots the
kernel directly with `runtime_image_args()`, live-boot fetches root.squashfs into RAM, cloud-init reads
the seed and phones home. The VM has a second NIC first in PCI order, with a link but no DHCP
behind it: BOOTIF must make live-boot and cloud-init use the right one. Timings are printed
(run with `pytest -s`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from activities.domain.boot import runtime_image_args
from bootedge.images import discovery as images, runtime as runtime_image
from tests.conftest import Built
from tests.netlab import Lab, ip
from tests.vm.test_bootedge_qemu import _unavailable as _boot_unavailable  # QEMU, dnsmasq, a tap

QEMU = shutil.which("qemu-system-x86_64")
DNSMASQ = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if Path("/usr/sbin/dnsmasq").exists() else None)
MiB = 1024 * 1024
BOOT_DEADLINE_S = 900.0   # TCG: python and cloud-init are slow without KVM
HTTP_PORT = 8080
SMOKE = re.compile(r"TEMPERED-SMOKE (\w[\w-]*) ?(.*)")


@pytest.fixture(scope="module")
def image(runtime_build: Built) -> Built:
    """The session's runtime image (built once, shared with the lifecycle's QEMU test)."""
    return runtime_build


# ---- without building ----------------------------------------------------------------------


def test_kernel_args_fetch_the_root_into_ram_and_leave_the_seed_to_the_caller() -> None:
    url = "http://10.0.0.3:8080/images/runtime/root.squashfs"
    args = runtime_image_args(url)
    assert args[:2] == ["boot=live", f"fetch={url}"]
    assert "ip=frommedia" in args and "ip=dhcp" not in args   # live-boot would read "dhcp" as an address
    assert args[-1] == "console=ttyS0,115200n8"
    assert not any(a.startswith(("ds=", "BOOTIF=", "persistence", "components")) for a in args)
    assert all(" " not in a for a in args)


def test_the_recipe_is_complete_and_hashed() -> None:
    packages = runtime_image.read_packages()
    for wanted in ("linux-image-amd64", "live-boot", "cloud-init", "openssh-server", "containerd", "python3",
                   "systemd-sysv", "ifupdown", "isc-dhcp-client", "conntrack", "ebtables", "socat"):
        assert wanted in packages
    assert len(packages) == len(set(packages))
    options = runtime_image.read_dpkg_options()
    assert "path-exclude=/usr/share/doc/*" in options and all("=" in o for o in options)
    names = {p.relative_to(runtime_image.RECIPE_DIR).as_posix() for p in runtime_image.recipe_files()
             if p.is_relative_to(runtime_image.RECIPE_DIR)}
    assert {"packages", "dpkg.cfg", "hooks/essential", "hooks/customize", "hooks/debs",
            "includes/etc/cloud/cloud.cfg.d/90_tempered.cfg"} <= names
    versions = {p: "1.0" for p in packages}
    assert runtime_image.input_hash(versions) == runtime_image.input_hash(dict(versions))
    assert runtime_image.input_hash(versions) != runtime_image.input_hash(versions | {"cloud-init": "1.1"})
    command = runtime_image.mmdebstrap_command(Path("/r"), packages, Path("/c d"), Path("/n"))
    assert "--include=" + ",".join(packages) in command and command[-4:-3] == ["/r"]
    assert "--setup-hook=sh " + str(runtime_image.RECIPE_DIR / "hooks" / "debs") + " in \"$1\" '/c d'" in command


def test_it_will_not_overwrite_another_kind_of_image(tmp_path: Path) -> None:
    (tmp_path / "image.json").write_text(json.dumps({"kind": "discovery", "hash": "x"}))
    with pytest.raises(images.ImageBuildError, match="holds the discovery image"):
        runtime_image.build_runtime(tmp_path, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


# ---- the build -----------------------------------------------------------------------------


def _unsquash(info: runtime_image.RuntimeImageInfo, into: Path, *paths: str) -> Path:
    """Extract some paths of root.squashfs into `into` (no mount, no loop device)."""
    subprocess.run(
        ["unsquashfs", "-no-progress", "-quiet", "-d", str(into), str(info.squashfs), *paths],
        check=True, capture_output=True, text=True,
    )
    return into


def _initrd_names(initrd: Path) -> set[str]:
    """The names in initrd.img: a zstd-compressed newc cpio archive (no early microcode part)."""
    data = subprocess.run(["zstd", "-dc", str(initrd)], check=True, capture_output=True).stdout
    names, offset = set(), 0
    while offset < len(data) and data[offset : offset + 6] == b"070701":
        size, namesize = int(data[offset + 54 : offset + 62], 16), int(data[offset + 94 : offset + 102], 16)
        name = data[offset + 110 : offset + 110 + namesize - 1].decode()
        offset += 110 + namesize
        offset += -offset % 4
        offset += size + (-size % 4)
        if name == "TRAILER!!!":
            break
        names.add(name)
    return names


def test_the_image_holds_what_a_node_needs(image: Built, tmp_path: Path) -> None:
    info = image.info
    record = json.loads((info.output_dir / "image.json").read_text())
    assert record["kind"] == "runtime" and record["hash"] == info.hash
    assert set(record["files"]) == set(runtime_image.FILES)
    for name in runtime_image.FILES:
        assert (info.output_dir / name).stat().st_size == record["files"][name]["bytes"]
    assert info.squashfs.stat().st_size == info.squashfs_bytes
    assert record["cloud_init"].startswith("22.") and info.versions["cloud-init"] == record["cloud_init"]
    for package in ("systemd", "containerd", "openssh-server", "python3", info.kernel_package):
        assert info.versions[package], package
    assert info.kernel_package == f"linux-image-{info.kernel_release}"

    listing = subprocess.run(
        ["unsquashfs", "-lls", str(info.squashfs)], check=True, capture_output=True, text=True
    ).stdout
    paths = {line.split("squashfs-root", 1)[1].split(" -> ")[0]: line for line in listing.splitlines()
             if "squashfs-root" in line}
    # Debian 12 is merged-/usr: /bin, /sbin and /lib are symbolic links into /usr.
    assert paths["/sbin"].endswith("-> usr/sbin") and paths["/lib"].endswith("-> usr/lib")
    for wanted in ("/usr/bin/cloud-init", "/usr/sbin/sshd", "/usr/bin/python3", "/usr/bin/containerd",
                   "/usr/sbin/runc", "/usr/sbin/conntrack", "/usr/sbin/ifup", "/usr/sbin/dhclient",
                   "/etc/cloud/cloud.cfg.d/90_tempered.cfg", "/etc/systemd/system/tempered-ssh-keygen.service",
                   f"/usr/lib/modules/{info.kernel_release}/kernel/drivers/block/virtio_blk.ko"):
        assert wanted in paths, wanted
    assert paths["/usr/sbin/init"].endswith("-> /lib/systemd/systemd"), paths["/usr/sbin/init"]
    assert not any(p.startswith("/etc/ssh/ssh_host_") for p in paths), "the image must not carry SSH host keys"
    assert not any(p.startswith("/boot/") for p in paths)
    assert not any(p.endswith((".deb", "_Packages", "pkgcache.bin")) for p in paths), "apt's cache is in the image"
    assert not any(p.startswith("/usr/share/man/") or "/kernel/sound/" in p for p in paths)
    wants = "/etc/systemd/system/multi-user.target.wants/"
    assert wants + "ssh.service" in paths and wants + "tempered-ssh-keygen.service" in paths
    assert wants + "containerd.service" not in paths, "containerd must not start at boot"

    root = _unsquash(info, tmp_path / "root", "etc/shadow", "etc/machine-id", "etc/hostname",
                     "etc/cloud/cloud.cfg.d/90_tempered.cfg", "etc/network/interfaces", "etc/dhcp/dhclient.conf")
    assert (root / "etc/machine-id").read_text() == ""
    assert (root / "etc/hostname").read_text().strip() == "localhost"
    shadow = next(line for line in (root / "etc/shadow").read_text().splitlines() if line.startswith("root:"))
    assert shadow.split(":")[1] in ("*", "!", "!*"), "root must have no password"
    assert (root / "etc/cloud/cloud.cfg.d/90_tempered.cfg").read_bytes() == (
        runtime_image.RECIPE_DIR / "includes/etc/cloud/cloud.cfg.d/90_tempered.cfg").read_bytes()
    assert "datasource_list: [ NoCloud, None ]" in (root / "etc/cloud/cloud.cfg.d/90_tempered.cfg").read_text()
    assert "source /etc/network/interfaces.d/*" in (root / "etc/network/interfaces").read_text()
    # dhclient asks with iPXE's client identifier (01 + MAC): one lease, one address, every boot.
    dhclient = [line.strip() for line in (root / "etc/dhcp/dhclient.conf").read_text().splitlines()]
    assert dhclient.count("send dhcp-client-identifier = hardware;") == 1, dhclient

    names = _initrd_names(info.initrd)
    assert "scripts/live" in names and any(n.endswith("bin/live-boot") for n in names)
    assert any(n.endswith("lib/live/boot/9990-mount-http.sh") for n in names)
    assert any(n.endswith("bin/wget") for n in names) and any(n.endswith("bin/ipconfig") for n in names)
    assert any(n.endswith("/kernel/drivers/net/virtio_net.ko") for n in names)
    assert any(n.endswith("/kernel/fs/squashfs/squashfs.ko") for n in names)
    assert any(n.endswith("/kernel/fs/overlayfs/overlay.ko") for n in names)
    assert not any("/drivers/gpu/drm/i915/" in n for n in names), "live-boot's kms hook should be diverted"


def test_a_second_build_is_a_noop(image: Built) -> None:
    info = image.info
    names = (*runtime_image.FILES, "image.json")
    before = {name: (info.output_dir / name).stat().st_mtime_ns for name in names}
    said: list[str] = []
    started = time.monotonic()
    again = runtime_image.build_runtime(info.output_dir, progress=said.append, cache_dir=image.cache)
    seconds = time.monotonic() - started
    print(f"\n[runtime image] up-to-date check: {seconds:.2f} s (first build {image.seconds:.1f} s)")
    assert again.built is False and again.hash == info.hash
    assert again.versions == info.versions and again.squashfs_bytes == info.squashfs_bytes
    assert any("up to date" in line for line in said), said
    assert before == {name: (info.output_dir / name).stat().st_mtime_ns for name in names}


# ---- booting it ----------------------------------------------------------------------------

# The test's HTTP server, run in the server namespace: files from ROOT, every request logged as a
# JSON line (POST bodies included) to LOG.
SERVER = r"""
import json, sys, time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

root, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def record(**entry):
    with open(log, "a") as f:
        f.write(json.dumps({"time": time.time(), **entry}) + "\n")

class Handler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        record(method=self.command, path=self.path, status=args[1] if len(args) > 1 else None,
               client=self.client_address[0])

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode("utf-8", "replace")
        record(method="POST", path=self.path, body=body, client=self.client_address[0],
               content_type=self.headers.get("Content-Type"))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

ThreadingHTTPServer(("0.0.0.0", port), partial(Handler, directory=root)).serve_forever()
"""

USER_DATA = """\
#cloud-config
hostname: {hostname}
write_files:
  - path: /etc/tempered/smoke
    content: "written-by-cloud-init\\n"
runcmd:
  - - sh
    - -c
    - |
      exec > /dev/ttyS0 2>&1
      echo "TEMPERED-SMOKE hostname $(hostname)"
      echo "TEMPERED-SMOKE file $(cat /etc/tempered/smoke)"
      echo "TEMPERED-SMOKE root $(findmnt -no FSTYPE /)"
      for nic in /sys/class/net/*; do
        n=${{nic##*/}}; [ "$n" = lo ] && continue
        echo "TEMPERED-SMOKE nic $n $(cat $nic/address) $(ip -4 -o addr show dev $n | awk '{{print $4}}')"
      done
      echo "TEMPERED-SMOKE containerd $(systemctl is-enabled containerd) $(systemctl is-active containerd)"
      echo "TEMPERED-SMOKE ssh $(systemctl is-active ssh) $(ls /etc/ssh/ssh_host_*_key | wc -l)"
      echo "TEMPERED-SMOKE disks $(lsblk -dno NAME | tr '\\n' ' ')"
      echo "TEMPERED-SMOKE machine-id $(cat /etc/machine-id)"
      echo "TEMPERED-SMOKE dhclient $(pgrep -x dhclient | wc -l)"
      echo "TEMPERED-SMOKE klibc $(ls /run/net-*.conf | tr '\\n' ' ')"
      echo "TEMPERED-SMOKE mem $(awk '/^(MemTotal|MemAvailable|Unevictable|Shmem):/ \
        {{printf "%s=%dMiB ", $1, $2 / 1024}}' /proc/meminfo)"
      echo "TEMPERED-SMOKE medium $(du -m /run/live/medium/live/root.squashfs | cut -f1)"
      echo "TEMPERED-SMOKE done"
phone_home:
  url: http://{server}:{port}/phone-home
  post: [instance_id, hostname]
  tries: 10
"""


@dataclass
class SmokeLab:
    lab: Lab
    lan: str
    server: str
    tmp: Path
    namespaces: list[str] = field(default_factory=list)

    @property
    def server_ip(self) -> str:
        return self.lab.address(3)

    @property
    def http_log(self) -> Path:
        return self.tmp / "http.jsonl"

    @property
    def serial_log(self) -> Path:
        return self.tmp / "serial.log"

    def requests(self) -> list[dict]:
        if not self.http_log.exists():
            return []
        return [json.loads(line) for line in self.http_log.read_text().splitlines() if line.strip()]

    def serial(self) -> str:
        if not self.serial_log.exists():
            return ""
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", self.serial_log.read_text(errors="replace")).replace("\r", "")

    def diagnostics(self) -> str:
        tail = "\n".join(self.serial().splitlines()[-80:])
        requests = "\n".join(json.dumps(r) for r in self.requests()[-15:])
        dhcp = "\n".join((self.tmp / "dnsmasq.log").read_text(errors="replace").splitlines()[-10:])
        qemu = (self.tmp / "qemu.log").read_text(errors="replace")[-1500:] if (self.tmp / "qemu.log").exists() else ""
        return f"--- serial (tail) ---\n{tail}\n--- HTTP ---\n{requests}\n--- DHCP ---\n{dhcp}\n--- qemu ---\n{qemu}"



@pytest.fixture
def smoke_lab(image: Built, tmp_path: Path):
    """LAN namespace with br0 and tap0 (the VM's boot NIC), tap1 up but on no bridge (a NIC with
    a link and no DHCP); the server namespace on the bridge with dnsmasq and the HTTP server."""
    if (reason := _boot_unavailable()) is not None:
        pytest.skip(reason)
    lab = Lab()
    names: list[str] = []
    try:
        lan, server = lab.netns("lan"), lab.netns("srv")
        names = list(lab.namespaces)
        lab.bridge(lan)
        lab.attach(lan, server, "srv-p", 3)
        ip("tuntap", "add", "dev", "tap0", "mode", "tap", netns=lan)
        ip("link", "set", "tap0", "master", "br0", "up", netns=lan)
        ip("tuntap", "add", "dev", "tap1", "mode", "tap", netns=lan)
        ip("link", "set", "tap1", "up", netns=lan)
        setup = SmokeLab(lab, lan, server, tmp_path, names)
        _serve(setup, image.info)
        yield setup
    finally:
        lab.close()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    left = [ns for ns in names if ns in listed.split()]
    assert not left, f"namespaces left behind: {left}"


def _serve(setup: SmokeLab, info: runtime_image.RuntimeImageInfo) -> None:
    www = setup.tmp / "www"
    (www / "images" / "runtime").mkdir(parents=True)
    for name in runtime_image.FILES:
        (www / "images" / "runtime" / name).symlink_to(info.output_dir / name)
    subnet = setup.lab.subnet
    dhcp = setup.lab.run(
        setup.server,
        [DNSMASQ, "--no-daemon", "--conf-file=/dev/null", "--port=0", "--interface=eth0", "--bind-interfaces",
         f"--dhcp-range=10.213.{subnet}.100,10.213.{subnet}.150,255.255.255.0,1h", "--no-ping",
         f"--dhcp-leasefile={setup.tmp / 'leases'}", "--pid-file=", "--log-facility=-", "--log-dhcp"],
        setup.tmp / "dnsmasq.log",
    )
    (setup.tmp / "server.py").write_text(SERVER)
    http = setup.lab.run(
        setup.server, [sys.executable, str(setup.tmp / "server.py"), str(www), str(HTTP_PORT), str(setup.http_log)],
        setup.tmp / "http.log",
    )
    deadline = time.monotonic() + 20
    url = f"http://{setup.server_ip}:{HTTP_PORT}/images/runtime/vmlinuz"
    while time.monotonic() < deadline:
        probe = setup.lab.exec(setup.server, ["curl", "-sf", "-o", "/dev/null", "-r", "0-0", url], timeout=10)
        if probe.returncode == 0:
            break
        assert http.poll() is None, (setup.tmp / "http.log").read_text()
        time.sleep(0.2)
    else:
        raise AssertionError(f"the HTTP server did not come up: {(setup.tmp / 'http.log').read_text()}")
    assert dhcp.poll() is None, (setup.tmp / "dnsmasq.log").read_text()


def _seed(setup: SmokeLab, instance_id: str, hostname: str) -> str:
    seed = setup.tmp / "www" / "seed"
    seed.mkdir()
    (seed / "meta-data").write_text(f"instance-id: {instance_id}\nlocal-hostname: {hostname}\n")
    (seed / "user-data").write_text(USER_DATA.format(hostname=hostname, server=setup.server_ip, port=HTTP_PORT))
    # cloud-init asks for vendor-data too, and retries a 404 for 6 s.
    (seed / "vendor-data").write_text("")
    return f"http://{setup.server_ip}:{HTTP_PORT}/seed/"


def _smoke(log: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for match in SMOKE.finditer(log):
        found.setdefault(match.group(1), []).append(match.group(2).strip())
    return found


@pytest.mark.timeout(BOOT_DEADLINE_S + 600)
def test_a_vm_boots_the_image_from_http_into_ram_and_phones_home(smoke_lab: SmokeLab, image: Built) -> None:
    setup, info = smoke_lab, image.info
    pid = os.getpid() % 256
    mac, decoy = f"52:54:00:6b:{pid:02x}:01", f"52:54:00:6b:{pid:02x}:02"
    instance_id, hostname = f"i-smoke-{os.getpid()}", "tempered-smoke"
    seed_url = _seed(setup, instance_id, hostname)
    image_url = f"http://{setup.server_ip}:{HTTP_PORT}/images/runtime/root.squashfs"
    append = " ".join([
        *runtime_image_args(image_url), f"BOOTIF=01-{mac.replace(':', '-')}", f"ds=nocloud-net;s={seed_url}",
    ])
    disk = setup.tmp / "data.raw"
    with open(disk, "wb") as f:
        f.truncate(4 * 1024 * MiB)   # sparse
    args = [
        QEMU, "-accel", "tcg", "-machine", "q35", "-m", "2048", "-smp", "2",
        "-kernel", str(info.vmlinuz), "-initrd", str(info.initrd), "-append", append,
        # The decoy first: without BOOTIF it would be the first NIC tried.
        "-netdev", "tap,id=n1,ifname=tap1,script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=n1,mac={decoy},romfile=",
        "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=n0,mac={mac},romfile=",
        "-drive", f"file={disk},if=none,id=d0,format=raw", "-device", "virtio-blk-pci,drive=d0,serial=TEMPERED-DATA",
        "-nographic", "-vga", "none", "-serial", f"file:{setup.serial_log}", "-monitor", "none", "-no-reboot",
    ]
    started = time.monotonic()
    vm = setup.lab.run(setup.lan, args, setup.tmp / "qemu.log")
    marks: dict[str, float] = {}
    milestones = {
        "kernel": "Linux version", "systemd": "systemd 252", "cloud-init local": "running 'init-local'",
        "cloud-init network": "running 'init' at", "cloud-init final": "running 'modules:final'",
    }
    try:
        phoned = None
        while time.monotonic() - started < BOOT_DEADLINE_S and vm.poll() is None:
            log = setup.serial()
            for name, text in milestones.items():
                if name not in marks and text in log:
                    marks[name] = time.monotonic() - started
            if "fetched" not in marks and any(r.get("path", "").endswith("root.squashfs") and r.get("status") == "200"
                                              for r in setup.requests()):
                marks["fetched"] = time.monotonic() - started
            phoned = next((r for r in setup.requests() if r["method"] == "POST" and r["path"] == "/phone-home"), None)
            if phoned:
                marks["phone home"] = time.monotonic() - started
                break
            time.sleep(0.5)
        assert phoned is not None, (
            f"no phone home within {time.monotonic() - started:.0f} s (QEMU exit {vm.poll()}; seen {marks})\n"
            f"{setup.diagnostics()}"
        )
        deadline = time.monotonic() + 120
        while not re.search(r"Cloud-init v\. \S+ finished at", setup.serial()) and time.monotonic() < deadline:
            time.sleep(0.5)
        marks["cloud-init finished"] = time.monotonic() - started
        log = setup.serial()
    finally:
        if vm.poll() is None:
            os.killpg(vm.pid, signal.SIGKILL)
            vm.wait(timeout=30)

    smoke = _smoke(log)
    print(f"\n[runtime boot] from QEMU start: " + ", ".join(f"{k} {v:.1f} s" for k, v in marks.items()))
    print(f"[runtime boot] memory after cloud-init: {' '.join(smoke.get('mem', []))} (root.squashfs in RAM: "
          f"{' '.join(smoke.get('medium', []))} MiB, in Unevictable)")
    try:
        finished = re.search(r"Cloud-init v\. \S+ finished at .*Datasource DataSourceNoCloudNet", log)
        assert finished, "cloud-init did not finish with the NoCloud-net seed"
        body = parse_qs(phoned["body"])
        assert body["hostname"] == [hostname] and body["instance_id"] == [instance_id], phoned
        assert smoke["hostname"] == [hostname] and smoke["file"] == ["written-by-cloud-init"]
        assert smoke["root"] == ["overlay"], smoke["root"]
        nics = {fields[1]: fields[2:] for fields in (line.split() for line in smoke["nic"])}
        assert nics[mac] and nics[mac][0].startswith(f"10.213.{setup.lab.subnet}."), nics
        assert nics[decoy] == [], f"the NIC without DHCP got an address: {nics}"
        boot_nic = next(line.split()[0] for line in smoke["nic"] if line.split()[1] == mac)
        assert smoke["klibc"] == [f"/run/net-{boot_nic}.conf"], smoke["klibc"]
        assert smoke["dhclient"] == ["1"], "cloud-init's ifup should run dhclient to renew the lease"
        assert smoke["containerd"] == ["disabled inactive"]
        ssh_state, keys = smoke["ssh"][0].split()
        assert ssh_state == "active" and int(keys) >= 2
        assert "vda" in smoke["disks"][0].split()
        assert re.fullmatch(r"[0-9a-f]{32}", smoke["machine-id"][0])
        assert smoke["done"]
        vm_ip = nics[mac][0].split("/")[0]
        fetched = [r for r in setup.requests() if r.get("path", "").startswith("/images/") and r["client"] == vm_ip]
        assert [(r["path"], r["status"]) for r in fetched] == [("/images/runtime/root.squashfs", "200")], fetched
        seeded = {r["path"] for r in setup.requests() if r.get("path", "").startswith("/seed/")}
        assert {"/seed/meta-data", "/seed/user-data", "/seed/vendor-data"} <= seeded
    except (AssertionError, KeyError, IndexError, ValueError) as err:
        raise AssertionError(f"{err!r}\n{setup.diagnostics()}") from None
