"""The closed sets of reasons stay closed and label-safe."""

from __future__ import annotations

import re
from enum import StrEnum

import pytest

from tracker import reasons

FAMILIES = [
    value
    for value in vars(reasons).values()
    if isinstance(value, type) and issubclass(value, StrEnum) and value is not StrEnum
]


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__)
def test_members_are_short_snake_case_and_distinct(family):
    values = [member.value for member in family]
    assert len(values) == len(set(values)) == len(family.__members__)  # no silent alias
    for value in values:
        assert value == "" or re.fullmatch(r"[a-z][a-z0-9_]{0,39}", value), value


def test_flag_labels():
    assert reasons.flag_label(reasons.FraudFlag.IP_FLOOD) == "ip_flood"
    assert reasons.flag_label(reasons.BotReason.CRAWLER) == "bot:crawler"
