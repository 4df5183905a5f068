"""The discovery image's initramfs: a kernel package's modules, the closure of the wanted ones,
programs with the shared libraries they load, and the newc cpio archive, written here so the
same inputs give a byte-identical image.

The module closure is read from the modules' own `.modinfo` (no modprobe or depmod of the
build host); the initramfs module index is written by the image's own busybox `depmod`, the
same busybox whose `modprobe` reads it at boot.
"""

from __future__ import annotations

import gzip
import itertools
import lzma
import os
import shutil
import stat
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

from bootedge.images.common import ImageBuildError, run

# ---- kernel modules ----------------------------------------------------------------------

_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz")


def kernel_tree(kroot: Path) -> tuple[str, Path, Path]:
    """(release, vmlinuz, /lib/modules/RELEASE) of an unpacked linux-image package."""
    kernels = sorted((kroot / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise ImageBuildError(f"expected one boot/vmlinuz-* in the kernel package, found {len(kernels)}")
    release = kernels[0].name.removeprefix("vmlinuz-")
    for base in ("lib/modules", "usr/lib/modules"):
        moddir = kroot / base / release
        if moddir.is_dir():
            return release, kernels[0], moddir
    raise ImageBuildError(f"the kernel package has no lib/modules/{release}")


def _module_name(path: Path) -> str:
    name = path.name
    for suffix in _MODULE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    return data


def modinfo(elf: bytes) -> dict[str, list[str]]:
    """The .modinfo section of a kernel module: key -> values (alias, depends, softdep...)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        raise ImageBuildError("not a 64-bit ELF kernel module")
    endian = "<" if elf[5] == 1 else ">"
    (shoff,) = struct.unpack_from(endian + "Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", elf, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from(endian + "IIQQQQ", elf, shoff + index * shentsize)
        return name, offset, size

    _, names, _ = section(shstrndx)
    for index in range(shnum):
        name, offset, size = section(index)
        if elf[names + name : elf.index(b"\0", names + name)] == b".modinfo":
            info: dict[str, list[str]] = {}
            for item in elf[offset : offset + size].split(b"\0"):
                key, sep, value = item.decode("utf-8", "replace").partition("=")
                if sep:
                    info.setdefault(key, []).append(value)
            return info
    return {}


def module_closure(
    moddir: Path, wanted: Iterable[str]
) -> tuple[list[tuple[str, Path]], list[str], list[str]]:
    """The modules to ship for `wanted`, with everything they depend on.

    Returns ([(name, path relative to moddir)], missing, built_in). Hard dependencies come
    from each module's `depends=`; `softdep=` modules are added too when they exist.
    """
    index: dict[str, Path] = {}
    for path in (moddir / "kernel").rglob("*.ko*"):
        if path.name.endswith(_MODULE_SUFFIXES):
            index[_module_name(path)] = path.relative_to(moddir)
    builtin = set()
    builtin_list = moddir / "modules.builtin"
    if builtin_list.exists():
        builtin = {_module_name(Path(line.strip())) for line in builtin_list.read_text().splitlines() if line.strip()}

    chosen: dict[str, Path] = {}
    missing: list[str] = []
    built_in: list[str] = []
    queue = [name.replace("-", "_") for name in wanted]
    requested = set(queue)
    while queue:
        name = queue.pop(0)
        if name in chosen:
            continue
        if name not in index:
            if name in requested:
                (built_in if name in builtin else missing).append(name)
            continue
        chosen[name] = index[name]
        info = modinfo(_read_module(moddir / index[name]))
        for depends in info.get("depends", []):
            queue += [d.replace("-", "_") for d in depends.split(",") if d]
        for softdep in info.get("softdep", []):
            queue += [d.replace("-", "_") for d in softdep.split() if not d.endswith(":") and d.replace("-", "_") in index]
    return sorted(chosen.items()), sorted(set(missing)), sorted(set(built_in))


# ---- programs and their shared libraries --------------------------------------------------

_LIBRARY_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu")
_IMAGE_LIBRARY_DIR = "lib/x86_64-linux-gnu"
_PT_LOAD, _PT_DYNAMIC, _PT_INTERP = 1, 2, 3
_DT_NULL, _DT_NEEDED, _DT_STRTAB = 0, 1, 5


def elf_imports(elf: bytes, name: str = "the file") -> tuple[str | None, list[str]]:
    """(ELF interpreter, DT_NEEDED library names) of a 64-bit little-endian program or library,
    read from its program headers (what the dynamic loader itself reads).

    A truncated or malformed file (offsets past its end, a string without its NUL) is an
    ImageBuildError naming it, like every other reason an image cannot be built, not a bare
    struct.error or IndexError from deep in the parsing.
    """
    try:
        return _elf_imports(elf)
    except (struct.error, IndexError, ValueError) as error:  # UnicodeDecodeError is a ValueError
        raise ImageBuildError(f"{name} is not a readable ELF file: {error}") from error


def _elf_imports(elf: bytes) -> tuple[str | None, list[str]]:
    if elf[:4] != b"\x7fELF" or elf[4:6] != b"\x02\x01":
        raise ImageBuildError("not a 64-bit little-endian ELF file")
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    headers = [struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize) for i in range(phnum)]
    interpreter = None
    dynamic: list[tuple[int, int]] = []
    for kind, _flags, offset, _vaddr, _paddr, size in headers:
        if kind == _PT_INTERP:
            interpreter = elf[offset : offset + size].rstrip(b"\0").decode()
        elif kind == _PT_DYNAMIC:
            entries = (struct.unpack_from("<qQ", elf, offset + i) for i in range(0, size, 16))
            dynamic = list(itertools.takewhile(lambda entry: entry[0] != _DT_NULL, entries))

    def file_offset(vaddr: int) -> int:
        for kind, _flags, offset, start, _paddr, size in headers:
            if kind == _PT_LOAD and start <= vaddr < start + size:
                return vaddr - start + offset
        raise ImageBuildError(f"ELF address {vaddr:#x} is in no loaded segment")

    strtab = next((file_offset(value) for tag, value in dynamic if tag == _DT_STRTAB), None)
    needed = [
        elf[strtab + value : elf.index(b"\0", strtab + value)].decode()
        for tag, value in dynamic if tag == _DT_NEEDED and strtab is not None
    ]
    return interpreter, needed


def install_program(root: Path, tree: Path, program: str) -> list[str]:
    """Copy `program` (its path in `tree`, where Debian packages were unpacked) to the same path
    in the image, with its ELF interpreter and every shared library it loads, transitively.

    Libraries are found by name in tree's multiarch directories and written, as regular files,
    to the image's /lib/x86_64-linux-gnu, a directory Debian's loader searches by default.
    Returns the libraries' names; one the packages lack is an ImageBuildError naming it.
    """
    data = _read_in_tree(tree, tree / program)
    interpreter, queue = elf_imports(data, program)
    _write(root / program, data, executable=True)
    loader = Path(interpreter).name if interpreter else None
    if interpreter and loader:     # /lib64/ld-linux-x86-64.so.2: a link to the copy in the library directory
        queue.append(loader)
        link = root / interpreter.lstrip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(root / _IMAGE_LIBRARY_DIR / loader, link.parent))
    libraries: list[str] = []
    while queue:
        name = queue.pop(0)
        if name in libraries:
            continue
        libraries.append(name)
        library = _library(tree, name, program)
        _write(root / _IMAGE_LIBRARY_DIR / name, library, executable=name == loader)
        queue += elf_imports(library, f"{name} (needed by {program})")[1]
    return sorted(libraries)


def _library(tree: Path, name: str, program: str) -> bytes:
    for directory in _LIBRARY_DIRS:
        if (path := _resolve_in_tree(tree, tree / directory / name)).is_file():
            return path.read_bytes()
    raise ImageBuildError(f"{program} needs {name}, which none of the unpacked packages holds")


def _read_in_tree(tree: Path, path: Path) -> bytes:
    """A file's bytes, following symlinks inside `tree` (an absolute link target is read as
    a path in the tree, never on the build host)."""
    return _resolve_in_tree(tree, path).read_bytes()


def _resolve_in_tree(tree: Path, path: Path) -> Path:
    """`path` with every symlink along it followed the way the image's own root would follow it.

    Resolved component by component (an absolute target restarts at `tree`), so neither a link
    to `/...` nor one through a linked directory reads the build host's file of that name; a
    `..` that would climb out of `tree` is an ImageBuildError, and so is any resolved path that
    still lands outside it.
    """
    if not path.is_relative_to(tree):  # an absolute program path, say: tree / "/x" is "/x"
        raise ImageBuildError(f"{path} is not in the unpacked packages ({tree})")
    parts, current, hops = list(path.relative_to(tree).parts), tree, 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if current == tree:
                raise ImageBuildError(f"{path} leads out of the unpacked packages ({tree})")
            current = current.parent
        elif (candidate := current / part).is_symlink():
            hops += 1
            if hops > 40:
                raise ImageBuildError(f"too many symbolic links at {path}")
            target = Path(os.readlink(candidate))
            current = tree if target.is_absolute() else current
            parts = [p for p in target.parts if p not in ("/", ".")] + parts
        elif part != ".":
            current = candidate
    if not current.resolve().is_relative_to(tree.resolve()):
        raise ImageBuildError(f"{path} leads out of the unpacked packages ({tree})")
    return current


def _write(path: Path, data: bytes, executable: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o755 if executable else 0o644)


# ---- the initramfs -----------------------------------------------------------------------


def populate(
    root: Path, busybox: Path, moddir: Path, release: str, modules: list[tuple[str, Path]], scripts: dict[str, Path]
) -> None:
    """The initramfs tree at root: busybox and its applets, `scripts` (path in the image ->
    recipe file, made executable) and the kernel modules with their index."""
    for directory in ("bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "run", "tmp", "etc", "root", "var"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "var" / "run").symlink_to("../run")
    shutil.copy2(busybox, root / "bin" / "busybox")
    (root / "bin" / "busybox").chmod(0o755)
    # One relative symlink per applet, where busybox would install it (bin/sh, sbin/modprobe...).
    applets = run([str(busybox), "--list-full"], what="busybox --list-full").stdout.split()
    for applet in applets:
        link = root / applet
        if link.name == "busybox" or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(root / "bin" / "busybox", link.parent))
    if not (root / "bin" / "sh").is_symlink():
        raise ImageBuildError("busybox has no sh applet")

    for target_path, source in scripts.items():
        shutil.copyfile(source, root / target_path)
        (root / target_path).chmod(0o755)

    target = root / "lib" / "modules" / release
    for _, relative in modules:
        data = _read_module(moddir / relative)
        dest = target / str(relative).removesuffix(".xz").removesuffix(".gz")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    for name in ("modules.builtin", "modules.order"):
        if (moddir / name).exists():
            shutil.copyfile(moddir / name, target / name)
    # modules.dep and modules.alias, written by the busybox whose modprobe reads them at boot.
    run([str(busybox), "depmod", "-b", str(root), release], what="busybox depmod")
    for name in ("modules.dep", "modules.alias"):
        if not (target / name).exists():
            raise ImageBuildError(f"busybox depmod wrote no {name}")


def cpio_newc(root: Path) -> bytes:
    """An initramfs archive ("newc" cpio) of the tree at root, plus /dev/console.

    Deterministic: sorted names, owner 0:0, mtime 0. /dev/console is needed by the kernel
    before /init runs (it opens it as init's stdio), so it is added as a device node
    without needing root to mknod it.
    """
    entries: list[tuple[str, int, bytes, int]] = []  # name, mode, data, rdev(major, minor packed)
    for path in sorted(_walk(root)):
        name = path.relative_to(root).as_posix()
        st = path.lstat()
        if stat.S_ISDIR(st.st_mode):
            entries.append((name, stat.S_IFDIR | 0o755, b"", 0))
        elif stat.S_ISLNK(st.st_mode):
            entries.append((name, stat.S_IFLNK | 0o777, os.readlink(path).encode(), 0))
        elif stat.S_ISREG(st.st_mode):
            mode = 0o755 if st.st_mode & 0o111 else 0o644
            entries.append((name, stat.S_IFREG | mode, path.read_bytes(), 0))
    entries.append(("dev/console", stat.S_IFCHR | 0o600, b"", os.makedev(5, 1)))
    entries.sort(key=lambda entry: entry[0])

    out = bytearray()

    def add(name: str, mode: int, data: bytes, rdev: int, ino: int) -> None:
        encoded = name.encode() + b"\0"
        header = "070701" + "".join(
            f"{value:08x}"
            for value in (
                ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data),
                0, 0, os.major(rdev), os.minor(rdev), len(encoded), 0,
            )
        )
        out.extend(header.encode() + encoded)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data, rdev) in enumerate(entries, start=1):
        add(name, mode, data, rdev, ino)
    add("TRAILER!!!", 0, b"", 0, 0)
    out.extend(b"\0" * (-len(out) % 512))
    return bytes(out)


def _walk(root: Path) -> Iterator[Path]:
    for directory, dirnames, filenames in os.walk(root):
        base = Path(directory)
        for name in dirnames + filenames:
            yield base / name
