"""Fixtures of the analysis tests."""

from __future__ import annotations

import pytest

from datatool.core.store import Store


@pytest.fixture()
def counted(monkeypatch) -> list[str]:
    """The digests of the masks the store decoded, in order (the real store, counted): what
    a cache saves is reads that do not happen."""
    reads: list[str] = []
    real = Store.get_array

    def get_array(self, digest):
        reads.append(digest)
        return real(self, digest)

    monkeypatch.setattr(Store, "get_array", get_array)
    return reads
