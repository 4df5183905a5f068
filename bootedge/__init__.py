"""The boot edge: proxyDHCP, TFTP and iPXE scripts next to the machines (not built yet)."""
