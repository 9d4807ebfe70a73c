"""A small async client for Prometheus' HTTP API: instant queries (``/api/v1/query``).

The autoscaler needs only instant vectors and scalars, so that is all this speaks. Every failure
(connection refused, timeout, non-2xx answer, ``status: error``, a body that is not the API's
JSON) becomes one ``PrometheusError`` whose message names the URL, the query and what to check.
Messages end up in a ServingPlan's status, so they never quote what the server sent (an
arbitrary URL's page could hold anything): only its status, content type, size and
Prometheus' ``errorType``. ``PROMETHEUS_URL_PATTERN`` (the API's, also in the CRD) is checked
again here, for the operator's own URL.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prfaas.operator.api.models import PROMETHEUS_URL_PATTERN
from yarl import URL

__all__ = ["PrometheusClient", "PrometheusError", "Sample"]

_ERROR_TYPE = re.compile(r"^[a-z_]{1,32}$")


class PrometheusError(Exception):
    """Prometheus could not answer a query; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One element of an instant vector (or a scalar, with no labels)."""

    labels: dict[str, str]
    value: float


def _value(raw: Any) -> float:
    # Prometheus encodes values as [timestamp, "string"]; "NaN", "+Inf" parse as floats.
    return float(raw[1])


@dataclass
class PrometheusClient:
    """Instant queries against ``url`` (e.g. ``http://prometheus.monitoring:9090``)."""

    url: str
    timeout_s: float = 10.0
    _session: aiohttp.ClientSession | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not re.match(PROMETHEUS_URL_PATTERN, self.url):
            raise PrometheusError(
                f"Prometheus URL {self.url[:100]!r} is not http(s)://host[:port][/path] without "
                "query, fragment or user info; fix spec.autoscaling.prometheusUrl or the "
                "operator's PRFAAS_PROMETHEUS_URL"
            )

    async def __aenter__(self) -> PrometheusClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s)
            )
        return self._session

    async def query(self, expr: str) -> list[Sample]:
        """The instant vector (or scalar) of ``expr`` now; NaN samples are dropped."""
        base = URL(self.url)
        endpoint = base.with_path(base.path.rstrip("/") + "/api/v1/query").with_query(
            {"query": expr}
        )
        where = f"Prometheus at {self.url} (query {expr!r})"
        try:
            async with self._http().get(endpoint, allow_redirects=False) as resp:
                data = await resp.read()
                what = f"{resp.content_type or 'no content type'}, {len(data)} bytes"
                if resp.status == 400 or resp.status == 422:
                    raise PrometheusError(
                        f"{where} rejected the query ({_error_type(data)}); check that it is "
                        "Prometheus and its version"
                    )
                if resp.status >= 300:
                    raise PrometheusError(
                        f"{where} answered HTTP {resp.status} ({what}); check "
                        "spec.autoscaling.prometheusUrl points at Prometheus' HTTP API"
                    )
                try:
                    body = _json(data)
                except ValueError as exc:
                    raise PrometheusError(
                        f"{where} answered something that is not JSON ({what}); check "
                        "spec.autoscaling.prometheusUrl"
                    ) from exc
        except TimeoutError as exc:
            raise PrometheusError(
                f"{where} did not answer within {self.timeout_s:g} s; check that Prometheus is "
                "not overloaded, or narrow the query"
            ) from exc
        except aiohttp.ClientError as exc:
            raise PrometheusError(
                f"{where} is unreachable: {exc!r}; check spec.autoscaling.prometheusUrl and that "
                "the operator's pod may reach it"
            ) from exc
        return _parse(body, where)


def _json(data: bytes) -> Any:
    return json.loads(data)


def _error_type(data: bytes | Any) -> str:
    """Prometheus' ``errorType`` when the answer is its error JSON (a short token), else
    ``error``; never the server's free text."""
    try:
        body = _json(data) if isinstance(data, bytes) else data
    except ValueError:
        return "errorType unknown"
    kind = body.get("errorType") if isinstance(body, dict) else None
    return f"errorType {kind}" if isinstance(kind, str) and _ERROR_TYPE.match(kind) else "error"


def _parse(body: Any, where: str) -> list[Sample]:
    if not isinstance(body, dict) or body.get("status") != "success":
        raise PrometheusError(f"{where} failed ({_error_type(body)})")
    data = body.get("data") or {}
    kind, result = data.get("resultType"), data.get("result") or []
    try:
        if kind == "vector":
            samples = [Sample(dict(r.get("metric") or {}), _value(r["value"])) for r in result]
        elif kind == "scalar":
            samples = [Sample({}, _value(result))]
        else:
            raise PrometheusError(
                f"{where} returned a {str(kind)[:20]!r} result; the autoscaler needs an instant "
                "vector"
            )
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise PrometheusError(
            f"{where} returned a malformed result ({type(exc).__name__})"
        ) from exc
    return [s for s in samples if not math.isnan(s.value)]
