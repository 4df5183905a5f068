"""The image builders: the discovery initramfs and the runtime OS (kernel, initrd, squashfs)."""
