"""PUBLISH_DEDUP_WINDOW_SEC: how the dedup window is read into BrokerSettings."""

from __future__ import annotations

import pytest

from conduit.errors import ConfigError
from conduit.settings import load_settings


def test_dedup_window_defaults_to_five_minutes() -> None:
    settings = load_settings("dev", environ={})

    assert settings.broker.dedup_window_s == 300


def test_dedup_window_zero_disables() -> None:
    settings = load_settings("dev", environ={"PUBLISH_DEDUP_WINDOW_SEC": "0"})

    assert settings.broker.dedup_window_s == 0


def test_dedup_window_negative_raises() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings("dev", environ={"PUBLISH_DEDUP_WINDOW_SEC": "-1"})

    assert str(raised.value) == "PUBLISH_DEDUP_WINDOW_SEC must be at least 0, got -1"
