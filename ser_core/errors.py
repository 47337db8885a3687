"""Errors a user can act on."""


class InputError(ValueError):
    """Bad input (audio, video, transcript, corpus path, checkpoint).

    The message is written for the person using the app: it says what was wrong and,
    where it can, what to do instead. Pages show it as-is, never a traceback.
    """
