"""`python -m services.cli ...`, as the tests and bench/ start the services."""

from services.cli import main

main()
