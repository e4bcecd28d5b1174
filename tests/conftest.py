import pytest


@pytest.fixture(autouse=True)
def _isolated_history(tmp_path_factory, monkeypatch):
    """Every test gets its own history folder (BATCHMEM_HOME), so runs never see each other's learned sizes."""
    monkeypatch.setenv("BATCHMEM_HOME", str(tmp_path_factory.mktemp("batchmem_home")))
