"""The ``aeterna`` command: one entry point, subcommands contributed by each package."""
