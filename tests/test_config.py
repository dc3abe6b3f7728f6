"""The one parser of r settings written as text (``--vision-r``, ``--text-r`` and their
sweeps in ``crossget profile``)."""

from __future__ import annotations

import pytest

from crossget_cli.config import parse_r, parse_r_sweep
from crossget_cli.errors import CrossGetError


@pytest.mark.parametrize("text,expected", [("16", 16), (" 0 ", 0), ("16,16,8", (16, 16, 8)), ("4, 4", (4, 4))])
def test_a_setting(text, expected):
    assert parse_r(text) == expected


@pytest.mark.parametrize("text,expected", [("0,4,8", [0, 4, 8]), ("16,4/4/2/2", [16, (4, 4, 2, 2)]), ("3", [3])])
def test_a_sweep(text, expected):
    assert parse_r_sweep(text) == expected


@pytest.mark.parametrize(
    "text,needle", [("x", "integer"), ("-1", ">= 0"), ("1,,2", "integer"), ("", "integer"), ("2/-3", ">= 0")]
)
def test_bad_text_names_the_option(text, needle):
    for parse in (parse_r, parse_r_sweep):
        if parse is parse_r and "/" in text:
            continue
        with pytest.raises(CrossGetError) as err:
            parse(text, "--vision-r")
        assert "--vision-r" in str(err.value) and needle in str(err.value)
