"""Copying a dynamically linked program into an initramfs: its ELF imports, read without the
build host's loader, and every library it needs, or an error naming the one that is missing.

The host's own /usr/bin/env (a Debian amd64 host, as image builds need) stands in for a
package's program: its tree is the host's root, read only."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bootedge.images.common import ImageBuildError
from bootedge.images.initramfs import elf_imports, install_program

ENV = Path("/usr/bin/env")
pytestmark = pytest.mark.skipif(
    not ENV.is_file() or os.uname().machine != "x86_64", reason="needs an x86-64 host's /usr/bin/env"
)


def test_a_programs_imports_are_its_interpreter_and_needed_libraries() -> None:
    interpreter, needed = elf_imports(ENV.read_bytes())
    assert interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert "libc.so.6" in needed


def test_not_an_elf_file_is_refused() -> None:
    with pytest.raises(ImageBuildError, match="not a 64-bit little-endian ELF file"):
        elf_imports(b"#!/bin/sh\necho hi\n")


def test_a_copied_program_runs_from_its_own_libraries(tmp_path: Path) -> None:
    root = tmp_path / "image"
    libraries = install_program(root, Path("/"), "usr/bin/env")
    assert "libc.so.6" in libraries and "ld-linux-x86-64.so.2" in libraries
    assert os.readlink(root / "lib64" / "ld-linux-x86-64.so.2") == "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    assert not (root / "lib" / "x86_64-linux-gnu" / "libc.so.6").is_symlink()
    if os.geteuid() == 0 and shutil.which("chroot"):
        ran = subprocess.run(["chroot", str(root), "/usr/bin/env", "--version"],
                             capture_output=True, text=True)
        assert ran.returncode == 0 and "env (GNU coreutils)" in ran.stdout, ran


def test_a_library_the_packages_lack_is_named(tmp_path: Path) -> None:
    tree = tmp_path / "unpacked"
    (tree / "usr" / "bin").mkdir(parents=True)
    shutil.copy(ENV, tree / "usr" / "bin" / "env")
    with pytest.raises(ImageBuildError, match="usr/bin/env needs ld-linux-x86-64.so.2|usr/bin/env needs libc.so.6"):
        install_program(tmp_path / "image", tree, "usr/bin/env")


def test_a_truncated_elf_file_is_named_not_a_struct_error(tmp_path: Path) -> None:
    with pytest.raises(ImageBuildError, match="the file is not a readable ELF file"):
        elf_imports(ENV.read_bytes()[:0x50])  # the ELF header, its program headers cut off
    tree = tmp_path / "unpacked"
    (tree / "usr" / "bin").mkdir(parents=True)
    (tree / "usr" / "bin" / "env").write_bytes(ENV.read_bytes()[:0x50])
    with pytest.raises(ImageBuildError, match="usr/bin/env is not a readable ELF file"):
        install_program(tmp_path / "image", tree, "usr/bin/env")


@pytest.mark.parametrize("escape", ["relative-link", "linked-directory"])
def test_a_symlink_out_of_the_tree_is_refused_not_read_from_the_host(tmp_path: Path, escape: str) -> None:
    """The host's own /usr/bin/env and its libraries are outside the tree: neither may be copied in."""
    tree = tmp_path / "unpacked"
    (tree / "usr" / "bin").mkdir(parents=True)
    if escape == "relative-link":
        (tree / "usr" / "bin" / "env").symlink_to("../../.." + str(ENV))
    else:  # the program is in the tree; its library directory links out of it
        shutil.copy(ENV, tree / "usr" / "bin" / "env")
        (tree / "lib").symlink_to("../../../../../../../../../../../../lib", target_is_directory=True)
    with pytest.raises(ImageBuildError, match="leads out of the unpacked packages"):
        install_program(tmp_path / "image", tree, "usr/bin/env")
    assert not (tmp_path / "image" / "lib" / "x86_64-linux-gnu" / "libc.so.6").exists()


def test_an_absolute_program_path_is_not_read_from_the_host(tmp_path: Path) -> None:
    (tmp_path / "unpacked").mkdir()
    with pytest.raises(ImageBuildError, match="is not in the unpacked packages"):
        install_program(tmp_path / "image", tmp_path / "unpacked", str(ENV))
