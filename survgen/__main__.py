"""`python -m survgen ...` runs the CLI (handy under `accelerate launch -m survgen`)."""

from survgen.cli import main

main()
