"""Errors that carry a message a user can act on."""


class FlowletError(Exception):
    """An error the user can act on: the message names the file, subject or key and the reason."""
