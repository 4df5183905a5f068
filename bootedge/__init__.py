"""The boot edge: proxyDHCP beside the site's DHCP, TFTP and the iPXE script server, run next to
the machines (`tempered bootedge`); and, in `bootedge.images`, the builders of the discovery and
runtime images it serves (run by `tempered image build`, never loaded by the edge's servers)."""
