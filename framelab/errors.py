"""Errors a user can cause (config, data, checkpoint). The CLI prints them as one line, no traceback."""


class UserError(Exception):
    """Something the user can fix: the message names what is wrong, where, and what would be right."""
