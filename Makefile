# The two set-up commands of the README. Both install what they need first.
#   make demo  the lab: the whole pipeline on 3 QEMU machines (sudo tempered lab up --machines 3)
#   make test  the test suite (every layer); make test-unit, test-workflow, ... one layer
# make up runs the stack alone (tempered up), for a real network (README, On a real network).
VENV ?= .venv
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
# Debian packages the tests start for real: PostgreSQL (DATABASE_URL), dnsmasq (TFTP, and the
# site DHCP in the lab), iPXE builds, QEMU with OVMF (the PXE lab), curl, iproute2, and BIND
# with nsupdate (DNS tests and the benchmark's anchor), and mmdebstrap with squashfs-tools (the
# runtime image's build), and the join lab's nodes: sshd, sudo, nc (the bastion hop), containerd,
# and openssl + python3-yaml for the kubeadm stand-in, chromium (headless) for the offline docs,
# systemd-analyze to verify the deployment units, and OpenIPMI's ipmi_sim, the BMC behind a
# discovery VM's IPMI interface.
TEST_PACKAGES := postgresql dnsmasq-base ipxe ipxe-qemu qemu-system-x86 ovmf curl iproute2 bind9 bind9-dnsutils \
                 mmdebstrap squashfs-tools zstd openssh-server sudo netcat-openbsd containerd openssl python3-yaml systemd \
                 chromium openipmi
# What the lab (make demo) starts and builds: QEMU with OVMF and iPXE's ROMs, the site's DHCP
# (dnsmasq) and DNS (BIND, dig to ask it), the runtime image's build (mmdebstrap, squashfs-tools,
# zstd), ssh for the Ansible join, and curl, ip, nc.
DEMO_PACKAGES := qemu-system-x86 ovmf ipxe ipxe-qemu dnsmasq-base bind9 bind9-dnsutils mmdebstrap squashfs-tools zstd \
                 curl iproute2 netcat-openbsd openssh-client
PACKAGES = $(TEST_PACKAGES)
# make demo MACHINES=1 LAB_ARGS="--api-port 8110": fewer machines, more options of tempered lab up.
MACHINES ?= 3
LAB_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo up test install system-packages test-unit test-workflow test-api test-lab test-vm

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

system-packages:
	@missing=$$(for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\n# no daemon starts while make installs packages (sshd, containerd, named)\nexit 101\n' | $(SUDO) tee /usr/sbin/policy-rc.d >/dev/null; \
	    $(SUDO) chmod +x /usr/sbin/policy-rc.d; trap '$(SUDO) rm -f /usr/sbin/policy-rc.d' EXIT; \
	  fi; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The lab runs as root (namespaces, a bridge, QEMU taps); QEMU uses -accel tcg, so no /dev/kvm.
# It prints the Temporal Web UI's URL and how to stop it: sudo .venv/bin/tempered lab down [--purge].
demo: $(STAMP)
	@[ "$$(id -u)" = 0 ] || sudo -v || { echo "make demo needs root (network namespaces, QEMU taps): run it as root or as a user who may use sudo"; exit 1; }
	@$(MAKE) --no-print-directory system-packages PACKAGES="$(DEMO_PACKAGES)"
	$(SUDO) $(VENV)/bin/tempered lab up --machines $(MACHINES) $(LAB_ARGS)

up: $(STAMP)
	$(VENV)/bin/tempered up

test: $(STAMP) system-packages
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/pytest -q

# One layer (README, Tests): unit and workflow need no Debian packages.
test-unit test-workflow: $(STAMP)
	$(VENV)/bin/pytest -q -m $(@:test-%=%)

# lab and vm need root (namespaces, QEMU): as another user they are skipped, saying why.
test-api test-lab test-vm: $(STAMP) system-packages
	$(SUDO) $(VENV)/bin/pytest -q -m $(@:test-%=%)
