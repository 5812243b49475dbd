"""Settings: every TAGVISION_* variable is read in one place, into typed fields."""

from __future__ import annotations

import os
from pathlib import Path

from tagvision.config import ProviderSettings, Settings


def test_settings_read_the_operator_variables(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TAGVISION_TRAINING_KEY", "given")
    monkeypatch.delenv("TAGVISION_PREDICTION_KEY", raising=False)
    monkeypatch.setenv("TAGVISION_ALLOW_PRIVATE_URLS", "1")
    monkeypatch.setenv("TAGVISION_LIBRARY_ROOTS", os.pathsep.join([str(tmp_path / "a"), "", str(tmp_path / "b")]))
    monkeypatch.setenv("TAGVISION_PEXELS_KEY", "pexels-key")
    monkeypatch.setenv("TAGVISION_BING_MARKET", "")  # empty counts as unset
    settings = Settings.load(tmp_path / "data")
    assert settings.data_dir == (tmp_path / "data").resolve()
    assert (settings.training_key, settings.prediction_key) == ("given", None)
    assert settings.allow_private_urls
    assert settings.library_roots == (tmp_path / "a", tmp_path / "b")
    assert settings.providers.pexels_key == "pexels-key" and settings.providers.bing_market is None


def test_defaults_allow_nothing_extra(tmp_path: Path, monkeypatch) -> None:
    for name in ("TAGVISION_ALLOW_PRIVATE_URLS", "TAGVISION_LIBRARY_ROOTS", "TAGVISION_TRAINING_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TAGVISION_OPENVERSE_URL", "http://openverse.test")
    settings = Settings.load(tmp_path)
    assert not settings.allow_private_urls and settings.library_roots == () and settings.training_key is None
    assert settings.providers.openverse_url == "http://openverse.test"
    only = ProviderSettings.from_env({"TAGVISION_OPENVERSE_URL": "http://openverse.test", "PEXELS_KEY": "no prefix"})
    assert only == ProviderSettings(openverse_url="http://openverse.test")
