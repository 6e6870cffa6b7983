"""GET /v1/models documents its `ip_adapter` entry in the OpenAPI schema (#30): clients grey out the Look reference
from it, so the field, its kinds and its nullability are part of the API."""

from __future__ import annotations


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
