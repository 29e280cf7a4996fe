"""`python -m cellbox ...` is the `cellbox` command."""

from ._cli import main

main()
