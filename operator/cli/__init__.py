"""The ``prfaas`` command line: one module per sub-command, on top of every other component."""

__all__: list[str] = []
