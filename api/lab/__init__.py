"""The lab: the whole pipeline on one machine (`tempered lab`). A top-layer tool: it may use the
API, the boot edge and the activities. network.py (namespaces, bridge), site.py (DHCP, BIND),
control.py (the control plane), edge.py, cluster.py, state.py (lab.json), lab.py (up, status,
down), cli.py (the commands), standin.py (the kubeadm stand-in's fragment)."""
