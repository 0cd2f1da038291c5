"""The one exception type for problems the user can fix (bad config, missing file, bad data).

The CLI prints these as a single line and exits with code 2; anything else is a bug and keeps
its traceback.
"""


class UserError(Exception):
    """A problem with the user's input; the message names the file or setting and the fix."""
