"""The message of a user-caused error, recovered from where torch wrapped it.

An error raised in a DataLoader worker comes back re-raised by torch (`ExceptionWrapper.reraise`)
with the same type but the message "Caught DatasetError in DataLoader worker process 0.\\nOriginal
Traceback ...", the original message on the traceback's last line. An error raised in a rank
started by Lightning's fork/spawn launcher comes back as torch's `ProcessRaisedException`, whose
message holds the rank's traceback. `user_message` finds the original message in both.
Standard library only: the CLI imports this before anything heavy.
"""
from __future__ import annotations

import re

# "package.module.ErrorName: " at the start of a line: how a traceback names its exception
_EXCEPTION_LINE = re.compile(r"^(?P<name>[A-Za-z_][\w.]*): ", re.MULTILINE)
_WORKER_WRAPPED = "\nOriginal Traceback (most recent call last):\n"


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _last_raised(text: str, names: set[str]) -> tuple[str, str] | None:
    """(name, message) of the last exception in traceback `text` whose qualified name is in
    `names` (the message is the rest of the text after its "name: ", which spans lines for a
    multi-line message); None when there is none."""
    found = None
    for m in _EXCEPTION_LINE.finditer(text):
        if m.group("name") in names:
            found = m
    return (found.group("name"), text[found.end():].rstrip("\n")) if found else None


def user_message(e: BaseException, reported: tuple[type[BaseException], ...]) -> str | None:
    """The message to print for `e` when it is (or wraps) one of the `reported` error types;
    None when it is some other error (a bug: its traceback is shown)."""
    e = raised_in_rank(e, reported)
    if not isinstance(e, reported):
        return None
    text = str(e)
    if _WORKER_WRAPPED not in text:
        return text
    found = _last_raised(text, {_qualified(type(e))})
    return found[1] if found else text


def raised_in_rank(e: BaseException, types: tuple[type[BaseException], ...]) -> BaseException:
    """The error of one of `types` that a fork/spawn rank raised last, rebuilt (same type and
    message) from the ProcessRaisedException that reports it; `e` itself otherwise."""
    if type(e).__name__ != "ProcessRaisedException":
        return e
    by_name = {_qualified(cls): cls for cls in types}
    found = _last_raised(str(e), set(by_name))
    return by_name[found[0]](found[1]) if found else e
