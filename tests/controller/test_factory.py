"""The controller factory: the CLI's config reaches the Memfault client, and the store's ownership is kept."""

from pathlib import Path

import httpx
import pytest

from controller.cli import ENV_PREFIX
from controller.errors import StoreError
from controller.factory import build_controller
from controller.memfault_answers import DeviceQuery, UpToDate
from controller.settings import ControllerSettings, StoreConfig
from controller.store.opening import open_store
from service_runtime.config import load_config

CONFIG = """
controller_id = "ctl-factory"
[store]
url = "sqlite:///{path}"
[memfault]
base_url = "http://memfault.test:8080"
cache_ttl_s = 42.0
max_concurrency = 3
requests_per_s = 7.5
timeout_s = 2.5
"""


async def test_the_config_files_memfault_section_reaches_the_client(tmp_path: Path) -> None:
    """A TOML config loaded as the CLI loads it sets every Memfault limit and the URL asked."""
    path = tmp_path / "controller.toml"
    path.write_text(CONFIG.format(path=tmp_path / "c.sqlite3"))
    settings = load_config(ControllerSettings, path, env_prefix=ENV_PREFIX, environ={})
    asked: list[httpx.URL] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request.url)
        return httpx.Response(204, headers={"memfault-reason": "latest"})

    async with build_controller(settings, memfault_transport=httpx.MockTransport(answer)) as service:
        memfault = service.coordinator.memfault
        limits = memfault.settings
        assert (limits.base_url, limits.cache_ttl_s, limits.max_concurrency) == (
            "http://memfault.test:8080",
            42.0,
            3,
        )
        assert (limits.requests_per_s, limits.timeout_s) == (7.5, 2.5)
        answer_for = await memfault.latest_release(DeviceQuery("S1", "hw", "app", "1.0.0", "key"))
    assert isinstance(answer_for, UpToDate)
    assert [(url.host, url.port) for url in asked] == [("memfault.test", 8080)]
    assert service.settings.controller_id == "ctl-factory"


async def test_a_store_it_opened_is_closed_and_a_store_passed_in_is_not(tmp_path: Path) -> None:
    """The factory closes the store it opened from the URL and leaves a caller's store open."""
    url = f"sqlite:///{tmp_path / 'c.sqlite3'}"
    settings = ControllerSettings(store=StoreConfig(url=url))
    async with build_controller(settings) as service:
        opened = service.store
        assert opened.devices() == []
    with pytest.raises(StoreError):
        opened.devices()
    mine = open_store(url)
    try:
        async with build_controller(settings, store=mine) as service:
            assert service.store is mine
        assert mine.devices() == []
    finally:
        mine.db.close()
