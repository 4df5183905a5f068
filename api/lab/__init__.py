"""The lab: the whole pipeline on one machine (namespaces, BIND, control plane, QEMU VMs)."""
