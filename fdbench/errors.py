"""The one exception type for problems a user can fix (bad input, missing files).

The CLI turns it into a single line on stderr and exit code 2; library callers can catch it.
"""


class FdbenchError(Exception):
    """A user-facing error: the message names the problem and, where possible, the fix."""


def brief(err: BaseException, limit: int = 160) -> str:
    """The reason of a library error in a few words, for the one-line message: torch's multi-paragraph
    weights-only refusals reduced to what happened, other messages to their first sentence (cut at a
    word, never mid-sentence without saying so)."""
    import re

    text = str(err).strip()
    if isinstance(err, KeyError):
        return f"damaged or incomplete: no entry {text}"
    if not text:
        return type(err).__name__
    if "Weights only load failed" in text:
        code = re.search(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) ([\w.]+)", text)
        if code:
            return (
                f"it holds a pickled Python object ({code.group(1)}) that would run code when loaded; "
                f"refused without running it"
            )
        detail = [p.strip() for p in text.split("\n\n") if p.strip()]
        inner = next((p for p in detail[1:] if not p.startswith("Check the documentation")), "")
        return f"not a file of tensors ({inner.splitlines()[0][:80]})" if inner else "not a file of tensors"
    if "failed finding central directory" in text or "failed reading zip archive" in text:
        return "not a complete zip archive"
    if isinstance(err, EOFError):
        return "the file ends too early (empty or cut short)"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if not lines[0].endswith(":") or len(lines) == 1 else f"{lines[0]} {lines[1]}"
    sentence = re.split(r"(?<=[.!?])\s", first)[0].rstrip(".")
    if len(sentence) > limit:
        sentence = sentence[:limit].rsplit(" ", 1)[0] + " ..."
    return sentence
