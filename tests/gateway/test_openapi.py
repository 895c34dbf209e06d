"""The OpenAPI document matches the router, both ways, and is valid 3.1."""

from __future__ import annotations

from tests.gateway.conftest import Env

METHODS = {"get", "post", "put", "patch", "delete"}


async def test_every_route_is_documented_and_every_operation_routed(env: Env) -> None:
    status, document, _ = await env.call("GET", "/api/v1/openapi.json", tenant=None)
    assert status == 200
    assert document["openapi"].startswith("3.1")
    documented = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }
    from gateway.app import make_app
    from gateway.settings import Settings
    from gateway.web_ui import is_ui_route

    app = make_app(Settings(), env.store, env.broker)
    routed = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD"
        and route.resource is not None
        and not is_ui_route(route)
    }
    assert routed == documented
    for path, item in document["paths"].items():
        for method, op in item.items():
            assert "default" in op["responses"], (method, path)
            for name in [p["name"] for p in op["parameters"] if p["in"] == "path"]:
                assert "{" + name + "}" in path
    refs = str(document)
    for name in document["components"]["schemas"]:
        assert f"#/components/schemas/{name}" in refs


async def test_the_document_validates_against_the_openapi_31_schema(env: Env) -> None:
    import jsonschema

    _status, document, _ = await env.call("GET", "/api/v1/openapi.json", tenant=None)
    for schema in document["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
