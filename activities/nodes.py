"""Cluster operations' node activities: drain, uncordon and read the version of a node through kubectl
on a ready control-plane machine, reboot a member through its machine workflow, and wait until a
rebooted machine is ready again. (Filled in by the operations branch.)"""
