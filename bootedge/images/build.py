"""`tempered image build KIND`: pick the builder, show its progress, report the sizes.

The one place that knows both builders, so they need not know each other.
"""

from __future__ import annotations

from pathlib import Path

from bootedge.images import discovery, runtime
from bootedge.images.common import ImageBuildError, default_output_dir

KINDS = ("discovery", "runtime")


def build_command(
    kind: str, output: Path | None = None, force: bool = False
) -> discovery.ImageInfo | runtime.RuntimeImageInfo:
    """Build with a progress display, then report sizes.

    Raises typer.Exit(1) with a printed reason when the build fails.
    """
    import typer
    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True)
    if kind not in KINDS:
        raise typer.BadParameter(f"unknown image kind {kind!r}; known: {', '.join(KINDS)}", param_hint="KIND")
    output_dir = output or default_output_dir(kind)
    build, report = (
        (runtime.build_runtime, runtime.report) if kind == "runtime" else (discovery.build_discovery, discovery.report)
    )
    try:
        with console.status(f"building the {kind} image", spinner="dots") as status:
            def progress(message: str) -> None:
                console.print(f"[dim]•[/dim] {message}")
                status.update(f"[bold]{kind} image[/bold]: {message}")

            info = build(output_dir, progress=progress, force=force)
    except ImageBuildError as e:
        console.print(f"[red]cannot build the {kind} image[/red]: {e}")
        raise typer.Exit(1) from None
    report(info)
    return info


def main(argv: list[str] | None = None) -> None:
    """python -m bootedge.images.build [discovery|runtime] [--output DIR] [--force]"""
    import argparse

    import click

    parser = argparse.ArgumentParser(prog="python -m bootedge.images.build", description="Build a Tempered boot image.")
    parser.add_argument("kind", nargs="?", default="discovery", choices=KINDS)
    parser.add_argument("--output", type=Path, default=None, help="default $TEMPERED_HOME/edge/images/KIND")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)
    try:
        build_command(args.kind, args.output, force=args.force)
    except click.exceptions.Exit as e:
        raise SystemExit(e.exit_code) from None


if __name__ == "__main__":
    main()
