"""Our cloud-config merging and validation against cloud-init's own code.

Debian's cloud-init package (the version the runtime image installs) is downloaded and unpacked
(never installed on this host), and its `cloudinit` package imported: the merged result of every
corpus combination must equal what cloud-init's cloud-config part handler writes on a node fed
the same parts, and our schema errors must be cloud-init's.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from activities import cloudconfig
from activities.domain.cluster import ClusterSpec
from activities.domain.machine import RenderRequest
from activities.userdata import PHONE_HOME_URL, compose, data_disk

# Fragments as operators write them: default merging, string and list merge_how, every option
# the three mergers know, nested maps and lists of maps, and clashes on the same keys.
CORPUS = {
    "plain": "runcmd:\n  - echo plain\nwrite_files:\n  - {path: /etc/plain, content: p}\nntp: {servers: [a.example]}\n",
    "seed-append": "merge_how:\n  - {name: list, settings: [append]}\n  - {name: dict, settings: [no_replace, recurse_list]}\n"
                   "runcmd: [echo seed]\npackages: [htop]\nhostname: seed-host\n",
    "replace-all": "merge_how: 'dict(replace)+list(replace)+str()'\nhostname: replaced\nruncmd: [echo r1]\n"
                   "ntp: {enabled: false, servers: [b.example]}\n",
    "prepend": "merge_how: 'list(prepend)+dict(no_replace,recurse_list)'\nruncmd: [echo first]\npackages: [vim, curl]\n",
    "no-replace-list": "merge_how: 'list(no_replace)+dict(no_replace,recurse_list)'\nruncmd: [echo never, echo twice]\n"
                       "packages: [a, b, c, d]\n",
    "recurse-dict": "merge_how:\n  - [dict, replace, recurse_list]\n  - [list, recurse_dict]\n"
                    "write_files:\n  - {path: /etc/replaced-by-index, owner: 'root:root'}\nntp: {servers: [c.example]}\n",
    "str-append": "merge_how: 'dict(recurse_str,no_replace)+str(append)+list(append)'\nhostname: -suffix\n"
                  "final_message: ' and more'\n",
    "allow-delete": "merge_how: 'dict(allow_delete,no_replace)+list(append)'\nntp: null\npackages: [late]\n",
    "nested": "merge_how: 'dict(no_replace,recurse_list)+list(append)'\napt:\n  sources:\n    extra: {source: 'deb http://x bookworm main'}\n"
              "  preserve_sources_list: true\nbootcmd: [echo early]\n",
    "users": "users:\n  - {name: ops, groups: [adm], shell: /bin/bash}\nssh_pwauth: true\n",
    "merge-type": "merge_type: 'list(append)+dict(replace)+str()'\nruncmd: [echo merge-type]\nmanage_etc_hosts: false\n",
    "scalars": "package_update: true\npackage_upgrade: false\nruncmd: [[sh, -c, 'echo list form']]\n",
}
BASE = (
    "#cloud-config\nmerge_how:\n  - {name: list, settings: [append]}\n  - {name: dict, settings: [no_replace, recurse_list]}\n"
    "hostname: base-host\nruncmd: [echo base]\nwrite_files:\n  - {path: /etc/base, content: b}\n"
    "ntp: {enabled: true, servers: [0.pool.example]}\nfinal_message: base done\npackages: [base-pkg]\n"
)


@pytest.fixture(scope="module")
def cloudinit(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config):
    """Debian's cloudinit package, importable (from the .deb, unpacked into a temporary tree)."""
    from bootedge.images.common import apt_show

    found = apt_show("cloud-init").get("cloud-init")
    if found is None:
        pytest.skip("apt does not know cloud-init (run apt-get update)")
    cache = Path(os.environ.get("TEMPERED_IMAGE_CACHE") or pytestconfig.cache.mkdir("tempered-images"))
    deb = _download(cache, found)
    root = tmp_path_factory.mktemp("cloud-init-deb")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    sys.path.insert(0, str(root / "usr/lib/python3/dist-packages"))
    import cloudinit as package

    yield package, root, found["Version"]
    sys.path.remove(str(root / "usr/lib/python3/dist-packages"))


def _download(cache: Path, found: dict[str, str]) -> Path:
    """cloud-init's .deb is architecture `all`, unlike the packages bootedge/images/discovery.py downloads."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    target = debs / f"cloud-init_{found['Version'].replace(':', '%3a')}_all.deb"
    if not target.exists():
        command = ["apt-get", "download", "-q", f"cloud-init={found['Version']}"]
        if os.geteuid() == 0:
            command[2:2] = ["-o", "APT::Sandbox::User=root"]
        subprocess.run(command, cwd=debs, check=True, capture_output=True)
    return target


def _with_default(text: str) -> str:
    """The part as the node would need it to merge like we do: our default made explicit
    (cloud-init's own default for a part without merge_how is dict(replace)+list()+str())."""
    data = yaml.safe_load(text)
    if "merge_how" in data or "merge_type" in data:
        return text
    return "#cloud-config\n" + yaml.safe_dump({"merge_how": cloudconfig.DEFAULT_MERGE_HOW}) + text.removeprefix("#cloud-config\n")


def _node_merge(cloudinit, texts: list[str], tmp_path: Path) -> dict:
    """What cloud-init's part handler writes to cloud-config.txt for these parts."""
    from cloudinit import handlers
    from cloudinit.handlers.cloud_config import CloudConfigPartHandler

    written = tmp_path / "cloud-config.txt"

    class Paths:
        def get_ipath(self, name: str) -> str:
            return str(written)

    handler = CloudConfigPartHandler(Paths())
    handler.handle_part(None, handlers.CONTENT_START, None, None, None, None)
    for i, text in enumerate(texts):
        handler.handle_part(None, "text/cloud-config", f"part-{i}", _with_default(text), None, {})
    handler.handle_part(None, handlers.CONTENT_END, None, None, None, None)
    return yaml.safe_load(written.read_text())


def _our_merge(texts: list[str]) -> dict:
    return cloudconfig.merge([cloudconfig.parse(text, f"part {i}") for i, text in enumerate(texts)])


COMBINATIONS = [[name] for name in CORPUS] + [list(pair) for pair in itertools.permutations(CORPUS, 2)] + [
    ["plain", "prepend", "str-append"], ["replace-all", "allow-delete", "users"], ["nested", "recurse-dict", "seed-append"],
]


def test_merging_equals_cloud_inits_merger_on_the_corpus(cloudinit, tmp_path):
    checked = 0
    for names in COMBINATIONS:
        texts = [BASE, *(CORPUS[n] for n in names)]
        assert _our_merge(texts) == _node_merge(cloudinit, texts, tmp_path), f"base + {' + '.join(names)}"
        checked += 1
    print(f"\n[merge] {checked} combinations of base + up to 3 fragments equal cloud-init {cloudinit[2]}'s merge")
    assert checked == len(COMBINATIONS) > 140


def test_the_default_appends_lists_and_keeps_what_came_first():
    merged = _our_merge([BASE, CORPUS["plain"], CORPUS["users"]])
    assert merged["runcmd"] == ["echo base", "echo plain"]
    assert [f["path"] for f in merged["write_files"]] == ["/etc/base", "/etc/plain"]
    assert merged["ntp"] == {"enabled": True, "servers": ["0.pool.example", "a.example"]}
    assert merged["hostname"] == "base-host" and merged["ssh_pwauth"] is True
    assert "merge_how" not in merged


@pytest.mark.parametrize(
    "text, message",
    [
        ("runcmd: [", "not valid YAML"),
        ("- just\n- a list\n", "non-empty YAML mapping"),
        ("", "non-empty YAML mapping"),
        ("merge_how: 'list(append)+colour(red)'\nruncmd: [x]\n", "unknown merger 'colour'"),
        ("merge_how: 'list(append)'\nruncmd: [x]\n", "no dict merger"),
        ("merge_how: 'list append'\nruncmd: [x]\n", "not written name(option,...)"),
        ("merge_how: [{settings: [append]}]\nruncmd: [x]\n", "malformed merge_how"),
    ],
)
def test_a_part_cloud_init_would_drop_is_an_error(text, message):
    with pytest.raises(cloudconfig.CloudConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        cloudconfig.parse(text, "fragment 'x'")


@pytest.mark.parametrize(
    "fragment",
    [
        "merge_how: 'dict(no_replace)+str(append)+list(append)'\nhostname: {a: 1}\n",
        "merge_how: 'list(no_replace)+dict(no_replace)'\nruncmd: {a: 1}\n",
    ],
)
def test_a_part_cloud_init_would_fail_to_merge_is_an_error(cloudinit, tmp_path, fragment):
    texts = [BASE, fragment]
    with pytest.raises(cloudconfig.CloudConfigError, match="part 2 cannot be merged"):
        _our_merge(texts)
    # cloud-init drops such a part with a warning: the node would silently lose it.
    assert _node_merge(cloudinit, texts, tmp_path) == _our_merge([BASE])


SCHEMA_CASES = [
    {"runcmd": "not a list"},
    {"ntp": {"servers": "one.example", "enabled": "yes"}},
    {"write_files": [{"content": "no path"}]},
    {"users": [{"name": "x", "lock_passwd": "sometimes"}], "ssh_pwauth": True},
    {"phone_home": {"url": "http://x/", "tries": "ten", "extra": 1}},
    {"fs_setup": [{"device": "/dev/vdb", "partition": "sometimes", "overwrite": "maybe"}]},
    {"mounts": "LABEL=x /mnt"},
    {"hostname": 42, "package_update": "true"},
    {"bootcmd": [["echo", 1]], "apt": {"preserve_sources_list": "no"}},
    {"runcmd": ["echo fine"], "write_files": [{"path": "/etc/x", "content": "ok"}]},
]


def test_schema_errors_are_cloud_inits(cloudinit):
    from cloudinit.config.schema import SchemaValidationError, validate_cloudconfig_schema

    for config in SCHEMA_CASES:
        ours = cloudconfig.schema_errors(config)
        try:
            validate_cloudconfig_schema(config, strict=True)
            theirs = []
        except SchemaValidationError as err:
            theirs = [f"{p.path}: {p.message}" if p.path else p.message for p in err.schema_errors]
        assert ours == theirs, config
    assert sum(bool(cloudconfig.schema_errors(c)) for c in SCHEMA_CASES) == len(SCHEMA_CASES) - 1


def test_the_schema_is_the_one_in_debians_cloud_init(cloudinit):
    _, root, version = cloudinit
    shipped = root / "usr/lib/python3/dist-packages/cloudinit/config/schemas/schema-cloud-config-v1.json"
    assert shipped.read_bytes() == cloudconfig.SCHEMA_FILE.read_bytes(), (
        f"cloud-init {version} ships another schema: copy {shipped.name} into infra/cloud-init/"
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("runcmd: {{ var.x", "template error"),
        ("ntp: {servers: nope}\n", "fails cloud-init's schema: ntp.servers"),
        ("write_files:\n  - path: {{ var.path }}\n    content: x\nntp: {enabled: {{ var.on }}}\n", None),
        ("hostname: {{ machine.hostname }}\nruncmd: ['echo {{ var.greeting | upper }}']\n", None),
        ("x" * (cloudconfig.MAX_FRAGMENT_BYTES + 1) + ": 1\n", "larger than"),
    ],
)
def test_fragments_are_checked_alone_with_variables_standing_in(text, message):
    if message is None:
        assert cloudconfig.check_fragment("f", text)
    else:
        with pytest.raises(cloudconfig.CloudConfigError, match=message):
            cloudconfig.check_fragment("f", text)


REQUEST = RenderRequest(machine_id="m-1", cluster="c", role="worker", is_new=True, hostname="node-1")


def _compose(includes, variables=None, disk="/dev/vda", is_new=True):
    request = REQUEST.model_copy(update={"is_new": is_new})
    return compose(request, ClusterSpec(name="c"), variables or {}, includes, disk, "ssh-ed25519 AAAAC3Nza test")


def test_the_base_template_renders_a_valid_user_data_with_hostname_key_ntp_disk_and_phone_home(cloudinit):
    from cloudinit.config.schema import validate_cloudconfig_schema

    new = _compose([("motd", "write_files:\n  - {path: /etc/motd, content: '{{ var.site }}'}\n")], {"site": "lab"})
    validate_cloudconfig_schema(new, strict=True)
    assert new["hostname"] == "node-1"
    assert new["users"][0]["ssh_authorized_keys"] == ["ssh-ed25519 AAAAC3Nza test"]
    assert new["ntp"]["servers"] == ClusterSpec(name="c").ntp_servers
    assert new["fs_setup"] == [
        {"label": "tempered-data", "filesystem": "ext4", "device": "/dev/vda", "partition": "none", "overwrite": True}
    ]
    assert {"path": "/etc/motd", "content": "lab"} in new["write_files"]
    assert new["phone_home"]["url"] == PHONE_HOME_URL
    for directory in ("/var/lib/containerd", "/var/lib/kubelet", "/var/lib/etcd", "/etc/kubernetes"):
        assert directory in new["runcmd"][0][2]
    kept = _compose([], is_new=False)
    assert kept["fs_setup"][0]["partition"] == "auto" and kept["fs_setup"][0]["overwrite"] is False
    assert "fs_setup" not in _compose([], disk=None) and "mounts" not in _compose([], disk=None)


def test_fragments_read_the_clusters_kubernetes_version():
    """An upgrade changes the cluster's version; the next boot's fragment installs that one."""
    fragment = ("write_files:\n  - {path: /etc/k8s, content: 'v{{ kubernetes_minor }} "
                "kubelet={{ kubernetes_version }}-*'}\n")
    spec = ClusterSpec(name="c", kubernetes_version="v1.32.1")
    config = compose(REQUEST, spec, {}, [("kubernetes", fragment)], None, "ssh-ed25519 AAAAC3Nza test")
    assert {"path": "/etc/k8s", "content": "v1.32 kubelet=1.32.1-*"} in config["write_files"]


def test_a_hostile_value_cannot_add_keys():
    config = _compose([], {"x": "1"}, disk="/dev/vda\nruncmd: [reboot]")
    assert config["fs_setup"][0]["device"] == "/dev/vda\nruncmd: [reboot]"
    assert config["runcmd"][0][0] == "sh" and len(config["runcmd"]) == 1
    request = REQUEST.model_copy(update={"hostname": "evil\nbootcmd: [reboot]"})
    config = compose(request, ClusterSpec(name="c"), {}, [], None, "ssh-ed25519 AAAA\npackages: [x]")
    assert "bootcmd" not in config and "packages" not in config


@pytest.mark.parametrize(
    "includes, message",
    [
        ([("missing", None)], "include 'missing' names no fragment: create it"),
        ([("bad", "bootcmd: 5\n")], "merged user-data fails cloud-init's schema: bootcmd"),
        ([("undefined", "runcmd: ['echo {{ var.nope }}']\n")], "fragment 'undefined': template error: variable 'nope' is not set for this machine"),
    ],
)
def test_rendering_errors_name_the_fragment(includes, message):
    with pytest.raises(cloudconfig.CloudConfigError, match=message):
        _compose(includes)


def test_the_data_disk_is_the_variable_or_the_largest_disk():
    facts = {"disks": [{"name": "sda", "size_bytes": 10}, {"name": "nvme0n1", "size_bytes": 30}, {"name": "sdb", "size_bytes": 30}]}
    assert data_disk(facts, {}) == "/dev/nvme0n1"
    assert data_disk(facts, {"data_disk": "/dev/disk/by-id/x"}) == "/dev/disk/by-id/x"
    assert data_disk({"disks": []}, {}) is None and data_disk(None, {}) is None
