"""`chatrex-ros` subcommands: each module exposes ``register(subparsers)``."""
