"""The Prometheus client against a fake Prometheus (an aiohttp app on loopback): typed samples
from vectors and scalars, and every failure as one ``PrometheusError`` naming what to check."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from prfaas.operator.api import models as api
from prfaas.operator.autoscaling.prometheus import PrometheusClient, PrometheusError, Sample
from pydantic import ValidationError

Answer = Callable[[str], web.Response]


@pytest_asyncio.fixture()
async def fake() -> AsyncIterator[tuple[str, dict[str, Answer]]]:
    routes: dict[str, Answer] = {}

    async def query(request: web.Request) -> web.Response:
        expr = request.query["query"]
        for needle, answer in routes.items():
            if needle in expr:
                return answer(expr)
        return web.json_response(
            {"status": "success", "data": {"resultType": "vector", "result": []}}
        )

    app = web.Application()
    app.router.add_get("/api/v1/query", query)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", routes
    finally:
        await runner.cleanup()


def _vector(*items: tuple[dict[str, str], str]) -> web.Response:
    body: dict[str, Any] = {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": m, "value": [1700000000.0, v]} for m, v in items],
        },
    }
    return web.json_response(body)


async def test_vector_and_scalar_results_are_typed_samples(
    fake: tuple[str, dict[str, Answer]],
) -> None:
    url, routes = fake
    routes["by (link)"] = lambda _: _vector(({"link": "a"}, "1.5e9"), ({"link": "b"}, "NaN"))
    routes["scalar("] = lambda _: web.json_response(
        {"status": "success", "data": {"resultType": "scalar", "result": [1.0, "42"]}}
    )
    async with PrometheusClient(url) as prom:
        assert await prom.query("sum by (link) (x)") == [Sample({"link": "a"}, 1.5e9)]
        assert await prom.query("scalar(y)") == [Sample({}, 42.0)]
        assert await prom.query("nothing_here") == []


async def test_a_rejected_query_names_the_prometheus_error(
    fake: tuple[str, dict[str, Answer]],
) -> None:
    url, routes = fake
    routes["bad"] = lambda _: web.json_response(
        {"status": "error", "errorType": "bad_data", "error": "parse error at char 4"}, status=400
    )
    async with PrometheusClient(url) as prom:
        with pytest.raises(PrometheusError, match=r"rejected the query \(errorType bad_data\)"):
            await prom.query("bad(")


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (lambda _: web.Response(status=503, text="down"), "HTTP 503.*prometheusUrl"),
        (lambda _: web.Response(text="<html>"), "not JSON.*prometheusUrl"),
        (lambda _: web.json_response({"status": "error", "error": "boom"}), r"failed \(error\)"),
        (
            lambda _: web.json_response(
                {"status": "success", "data": {"resultType": "matrix", "result": []}}
            ),
            "'matrix' result",
        ),
        (
            lambda _: web.json_response(
                {"status": "success", "data": {"resultType": "vector", "result": [{"x": 1}]}}
            ),
            "malformed",
        ),
    ],
)
async def test_bad_answers_become_prometheus_errors(
    fake: tuple[str, dict[str, Answer]], answer: Answer, match: str
) -> None:
    url, routes = fake
    routes["q"] = answer
    async with PrometheusClient(url) as prom:
        with pytest.raises(PrometheusError, match=match):
            await prom.query("q")


async def test_unreachable_and_slow_prometheus_say_what_to_check() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    async with PrometheusClient(f"http://127.0.0.1:{free}") as prom:
        with pytest.raises(PrometheusError, match=r"unreachable.*prometheusUrl"):
            await prom.query("up")

    async def never(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response()

    app = web.Application()
    app.router.add_get("/api/v1/query", never)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with PrometheusClient(f"http://127.0.0.1:{port}", timeout_s=0.1) as prom:
            with pytest.raises(PrometheusError, match=r"did not answer within 0\.1 s"):
                await prom.query("up")
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    "url",
    [
        "http://evil.example/steal#",
        "http://evil.example/steal?x=",
        "http://user:pw@prometheus:9090",
        "file:///etc/passwd",
        "gopher://prometheus:9090",
        "http://",
    ],
)
def test_urls_that_could_redirect_the_query_are_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="prometheusUrl"):
        api.Autoscaling.model_validate({"prometheusUrl": url})
    with pytest.raises(PrometheusError, match="without query, fragment or user info"):
        PrometheusClient(url)


def test_the_crd_carries_the_url_pattern() -> None:
    field = api.Autoscaling.model_json_schema(by_alias=True)["properties"]["prometheusUrl"]
    patterns = [o.get("pattern") for o in field.get("anyOf", [field])]
    assert api.PROMETHEUS_URL_PATTERN in patterns
    api.Autoscaling.model_validate({"prometheusUrl": "https://prometheus.monitoring:9090/prom"})


async def test_a_path_prefix_is_kept_and_the_body_never_echoed(
    fake: tuple[str, dict[str, Answer]],
) -> None:
    url, routes = fake
    routes["q"] = lambda _: web.Response(status=500, text="token=SECRET-in-some-page")
    async with PrometheusClient(url + "/") as prom:
        with pytest.raises(PrometheusError) as err:
            await prom.query("q")
    assert "SECRET" not in str(err.value)
    assert "HTTP 500 (text/plain, 25 bytes)" in str(err.value)
    routes["q"] = lambda _: web.Response(text="<html>SECRET</html>")
    async with PrometheusClient(url) as prom:
        with pytest.raises(PrometheusError, match="not JSON") as err:
            await prom.query("q")
    assert "SECRET" not in str(err.value)
