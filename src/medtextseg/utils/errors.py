"""The one error family users catch: every bad input raises ``MedTextSegError`` with a one-line message.

It subclasses ``ValueError`` so that generic callers that catch bad values keep working. The CLI prints
the message alone (no traceback) and exits with status 2.
"""


class MedTextSegError(ValueError):
    """Bad input (file, config field, prompt, ...). The message names the file or field and the rule."""
