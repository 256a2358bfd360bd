"""`python -m survgen ...` runs the CLI (handy under `accelerate launch -m survgen`)."""

from survgen.cli.main import main

main()
