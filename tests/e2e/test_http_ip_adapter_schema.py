"""GET /v1/models documents its `ip_adapter` entry in the OpenAPI schema (#30): clients grey out the Look reference
from it, so the field, its kinds and its nullability are part of the API."""

from __future__ import annotations

import shutil

import pytest

from tests.e2e.server_process import ServerProcess


def test_models_schema_names_the_ip_adapter(configured_server):
    c = configured_server.client
    schemas = c.get("/openapi.json").json()["components"]["schemas"]
    models = schemas["ModelsOut"]
    assert "ip_adapter" in models["properties"] and "ip_adapter" in models.get("required", [])
    refs = str(models["properties"]["ip_adapter"])
    assert "IPAdapterOut" in refs and "null" in refs  # an IPAdapterOut or null
    out = schemas["IPAdapterOut"]
    assert set(out["properties"]) == {"name", "kind", "image_encoder"}
    assert out["properties"]["kind"]["enum"] == ["plain", "plus", "plus-face"]
    assert c.get("/v1/models").json()["ip_adapter"] is None  # this server configures none


@pytest.mark.slow
def test_a_server_lists_its_configured_plus_adapter_and_both_weights(tmp_path, tiny_root):
    """[model.ip_adapter] naming the tiny plus file: /v1/models says plus, and `weights` holds both files' rows."""
    data = tmp_path / "server"
    shutil.copytree(tiny_root, data / "models" / "tiny")
    plus = data / "models" / "tiny" / "ip_adapter" / "models" / "ip-adapter-plus_sd15.safetensors"
    (tmp_path / "server.toml").write_text(f'[model.ip_adapter]\nadapter = "{plus}"\n')
    server = ServerProcess(["--model", "tiny", "--config", str(tmp_path / "server.toml")], data, data / "server.log")
    try:
        info = server.client.get("/v1/models").json()
    finally:
        server.stop()
    assert info["ip_adapter"]["kind"] == "plus" and info["ip_adapter"]["name"] == "ip-adapter-plus_sd15", info
    weights = {w["role"]: w for w in info["weights"]}
    assert weights["ip_adapter"]["loadable"] and weights["ip_adapter"]["path"] == str(plus), info["weights"]
    assert weights["image_encoder"]["path"] == str(plus.parent / "image_encoder"), info["weights"]
