"""The `cellbox` command that the wheel installs: the Rust command line, in process."""

import sys

from ._native import cli_main


def main() -> None:
    sys.exit(cli_main(["cellbox", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
