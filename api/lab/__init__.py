"""The lab: the whole pipeline on one machine (network namespaces, the edge, BIND, QEMU VMs)."""
