"""Errors that end a command with exit code 2 (bad input or config, not a bug)."""


class SendmapInputError(Exception):
    """Bad input: unknown format, truncated file, wrong scan shape, NaNs, bad config.

    The message must name the file, key or byte offset at fault; ``sendmap`` prints it
    as one paragraph and exits with code 2.
    """


class ConfigError(SendmapInputError):
    """A config file or ``--set`` override is invalid (unknown key, wrong type, bad value)."""


class SendmapOutputError(SendmapInputError):
    """The output cannot be written: a full disk, a read-only or unwritable output folder, a lost mount.

    Exit code 2 like bad input: the message names the folder (and file) and what to do.
    """


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM: ``kill``, a batch system's time limit): ends the run like Ctrl-C,
    leaving its output marked failed, exit code 143 (128 + 15)."""
