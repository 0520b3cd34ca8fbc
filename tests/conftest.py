"""Shared fixtures: a real Prefect server on PostgreSQL (``tools.services``) for the scale-out tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tools import services


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.PrefectServer]:
    """A Prefect API server backed by PostgreSQL: ``.api_url``, ``.db_url``, ``.env()`` for clients.

    The one named by ``GENMOCAP_TEST_PREFECT_API_URL`` (and ``GENMOCAP_TEST_PG_URL``) when set, as
    ``.ci/run`` does with ``python -m tools.services start``; else PostgreSQL and a server started here
    for the session and stopped at its end. Skips when no PostgreSQL server binaries are installed.
    """
    api_url = os.environ.get(services.ENV_PREFECT_API_URL)
    if api_url:
        home = tmp_path_factory.mktemp("prefect-client")
        yield services.PrefectServer(api_url=api_url, db_url=os.environ.get(services.ENV_PG_URL), home=home)
        return
    if services.find_postgres_bin() is None:
        pytest.skip(f"{services.INSTALL_HINT} (or set {services.ENV_PREFECT_API_URL})")
    root = tmp_path_factory.mktemp("services")
    pg = services.start_postgres(root)
    try:
        server = services.start_prefect_server(pg.url, root)
    except BaseException:
        pg.stop()
        raise
    try:
        yield server
    finally:
        server.stop()
        pg.stop()
