"""text.py: text from files and names is printed escaped, paths are quoted as a shell would need them."""
from __future__ import annotations

import shlex

from vitclassifier.text import printable, shell_word


def test_shell_words_quote_what_the_shell_would_split():
    assert shell_word("checkpoints/best") == "checkpoints/best"
    assert shlex.split(f"--model {shell_word('my runs/best')}") == ["--model", "my runs/best"]


def test_printable_escapes_control_characters_only():
    assert printable("café/猫 <b>$x$</b>") == "café/猫 <b>$x$</b>"
    assert printable("a\x1b[31mb\nc\td\x9b\u202ee") == "a\\x1b[31mb\\nc\\td\\x9b\\u202ee"

