"""`python -m tritonrag.cli`."""

from tritonrag.cli import main

main()
