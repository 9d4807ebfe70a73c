"""A small async client for Prometheus' HTTP API: instant queries (``/api/v1/query``).

The autoscaler needs only instant vectors and scalars, so that is all this speaks. Every failure
(connection refused, timeout, non-2xx answer, ``status: error``, a body that is not the API's
JSON) becomes one ``PrometheusError`` whose message names the URL, the query and what to check.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import aiohttp

__all__ = ["PrometheusClient", "PrometheusError", "Sample"]


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
        endpoint = self.url.rstrip("/") + "/api/v1/query"
        where = f"Prometheus at {self.url} (query {expr!r})"
        try:
            async with self._http().get(endpoint, params={"query": expr}) as resp:
                text = await resp.text()
                if resp.status == 400 or resp.status == 422:
                    raise PrometheusError(f"{where} rejected the query: {_error_of(text)}")
                if resp.status >= 300:
                    raise PrometheusError(
                        f"{where} answered HTTP {resp.status}: {text[:200]!r}; check "
                        "spec.autoscaling.prometheusUrl points at Prometheus' HTTP API"
                    )
                try:
                    body = await resp.json(content_type=None)
                except ValueError as exc:
                    raise PrometheusError(
                        f"{where} answered something that is not JSON: {text[:200]!r}; check "
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


def _error_of(text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        return text[:200]
    return f"{body.get('errorType', 'error')}: {body.get('error', text[:200])}"


def _parse(body: Any, where: str) -> list[Sample]:
    if not isinstance(body, dict) or body.get("status") != "success":
        err = body.get("error") if isinstance(body, dict) else body
        raise PrometheusError(f"{where} failed: {err}")
    data = body.get("data") or {}
    kind, result = data.get("resultType"), data.get("result") or []
    try:
        if kind == "vector":
            samples = [Sample(dict(r.get("metric") or {}), _value(r["value"])) for r in result]
        elif kind == "scalar":
            samples = [Sample({}, _value(result))]
        else:
            raise PrometheusError(
                f"{where} returned a {kind!r} result; the autoscaler needs an instant vector"
            )
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise PrometheusError(f"{where} returned a malformed result: {exc!r}") from exc
    return [s for s in samples if not math.isnan(s.value)]
