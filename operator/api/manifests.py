"""Read prfaas YAML manifests into the API models, turning every failure into a
:class:`ManifestProblem`.

``prfaas validate`` prints the problems; other commands (``plan``, ``up``) call
:func:`load_manifests`, which raises :class:`ManifestError` carrying the same problems. A problem
names the document (``kind/name``), the field path as written in YAML (camelCase,
``spec.workload.inputLength.mu``), the line, what was given and what is allowed — never a
traceback, whether the cause is bad YAML, an unknown kind or a value out of range.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from prfaas.operator.api import models as api
from pydantic import ValidationError
from pydantic_core import ErrorDetails

__all__ = [
    "ManifestError",
    "ManifestProblem",
    "Manifests",
    "load_manifests",
    "parse_manifests",
    "read_manifests",
]

_MISSING = "(missing)"
_R = TypeVar("_R", bound=api.Resource)


@dataclass(frozen=True, slots=True)
class ManifestProblem:
    """One thing wrong with one document, in the words of its YAML."""

    source: str
    """File the document came from."""
    document: str
    """``Kind/name``, or ``document N`` when the kind or name cannot be read."""
    path: str
    """Field path as written in YAML, e.g. ``spec.slo.ttft``; empty for the whole document."""
    given: str
    """The value found there, or ``(missing)``."""
    allowed: str
    """What would be accepted."""
    line: int | None = None
    """1-based line of the field (or of the document) in ``source``."""

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        field_ = f" {self.path}:" if self.path else ""
        return f"{where}: {self.document}{field_} got {self.given}; allowed: {self.allowed}"


@dataclass(slots=True)
class Manifests:
    """The objects read from one or more files, and the problems found on the way."""

    resources: list[api.Resource] = field(default_factory=list)
    problems: list[ManifestProblem] = field(default_factory=list)
    warnings: list[ManifestProblem] = field(default_factory=list)

    def of_kind(self, cls: type[_R]) -> list[_R]:
        """The objects of one kind, in file order."""
        return [r for r in self.resources if isinstance(r, cls)]


class ManifestError(ValueError):
    """Manifests that do not validate; ``problems`` says where and why."""

    def __init__(self, problems: Sequence[ManifestProblem]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the manifests:\n{lines}")


# ----------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------


MAX_MANIFEST_BYTES = 4 << 20
"""Largest manifest file read (a few objects are a few KiB)."""
MAX_YAML_DEPTH = 64
"""Deepest nesting of mappings and sequences (the resources need about 8)."""
MAX_YAML_NODES = 200_000
"""Most YAML nodes in one file."""
MAX_SCALAR_CHARS = 65_536
"""Longest scalar (a number of 100,000 digits is not a manifest)."""


_PLAIN_TAGS = frozenset(
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq")
)


def _unsafe_yaml(text: str) -> str | None:
    """Why ``text`` is refused before it is composed, or ``None``. One linear pass over the
    parser's events: aliases (exponential expansion: "billion laughs"), tags beyond YAML's
    standard ones (``!!python/object``), nesting, node count and scalar length are bounded."""
    depth = nodes = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            return f"a YAML alias (*{event.anchor}); write the value out instead"
        if isinstance(event, yaml.NodeEvent):
            nodes += 1
            tag = getattr(event, "tag", None)
            if tag is not None and tag not in _PLAIN_TAGS:
                return f"the YAML tag {tag[:60]}; plain values only"
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                return f"nesting deeper than {MAX_YAML_DEPTH} levels"
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        elif isinstance(event, yaml.ScalarEvent) and len(event.value) > MAX_SCALAR_CHARS:
            return f"a value of {len(event.value)} characters (at most {MAX_SCALAR_CHARS})"
        if nodes > MAX_YAML_NODES:
            return f"more than {MAX_YAML_NODES} YAML nodes"
    return None


def parse_manifests(text: str, source: str = "<string>") -> Manifests:
    """Parse a (multi-document) YAML string into validated resources and problems."""
    out = Manifests()

    def refuse(given: str, allowed: str, line: int | None = None) -> Manifests:
        out.problems.append(ManifestProblem(source, "(file)", "", given, allowed, line))
        return out

    if len(text) > MAX_MANIFEST_BYTES:
        return refuse(f"{len(text)} characters", f"at most {MAX_MANIFEST_BYTES} per file")
    try:
        unsafe = _unsafe_yaml(text)
    except yaml.YAMLError:
        unsafe = None  # compose_all below reports the parse error with its line
    if unsafe is not None:
        return refuse(unsafe, "plain YAML: no aliases or language tags, bounded size")
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        out.problems.append(
            ManifestProblem(
                source=source,
                document="(file)",
                path="",
                given=f"YAML that does not parse ({reason})",
                allowed="well-formed YAML documents separated by ---",
                line=mark.line + 1 if mark is not None else None,
            )
        )
        return out
    index = 0
    for node in nodes:
        if node is None:
            continue
        index += 1
        try:
            data = yaml.SafeLoader("").construct_document(node)
        except (yaml.YAMLError, ValueError, OverflowError) as exc:
            line = node.start_mark.line + 1
            return refuse(f"a value YAML cannot construct ({type(exc).__name__})", "plain "
                          "values", line)
        duplicates = _duplicate_keys(node, [])
        if duplicates:
            label = _label(data, index) if isinstance(data, Mapping) else f"document {index}"
            out.problems.extend(
                ManifestProblem(
                    source, label, _render(path), "the key twice", "each key once", line
                )
                for path, line in duplicates
            )
            continue
        resource, problems = _check_document(data, node, index, source)
        out.problems.extend(problems)
        if resource is not None:
            out.resources.append(resource)
    if index == 0:
        out.problems.append(
            ManifestProblem(source, "(file)", "", "no documents", "at least one prfaas.io object")
        )
    return out


def read_manifests(paths: Iterable[str | Path]) -> Manifests:
    """Parse several files and check them together (duplicates, references between objects)."""
    out = Manifests()
    for path in paths:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            out.problems.append(
                ManifestProblem(source, "(file)", "", reason, "a readable UTF-8 file")
            )
            continue
        one = parse_manifests(text, source)
        out.resources.extend(one.resources)
        out.problems.extend(one.problems)
    _check_together(out)
    return out


def load_manifests(*paths: str | Path) -> Manifests:
    """Like :func:`read_manifests`, but raise :class:`ManifestError` on any problem."""
    manifests = read_manifests(paths)
    if manifests.problems:
        raise ManifestError(manifests.problems)
    return manifests


def _check_document(
    data: Any, node: yaml.Node, index: int, source: str
) -> tuple[api.Resource | None, list[ManifestProblem]]:
    line = node.start_mark.line + 1
    if not isinstance(data, Mapping):
        shape = "a list" if isinstance(data, list) else f"a {type(data).__name__} ({data!r:.40})"
        return None, [
            ManifestProblem(
                source,
                f"document {index}",
                "",
                shape,
                "a mapping with apiVersion, kind, metadata and spec",
                line,
            )
        ]
    label = _label(data, index)
    kind = data.get("kind")
    try:
        cls = api.model_for_kind(kind) if isinstance(kind, str) else None
    except KeyError:
        cls = None
    if cls is None:
        known = ", ".join(c.KIND for c in api.KINDS)
        given = _MISSING if kind is None else _show(kind)
        return None, [
            ManifestProblem(source, label, "kind", given, known, _line_of(node, ["kind"]) or line)
        ]
    try:
        return cls.model_validate(data), []
    except ValidationError as exc:
        return None, [
            _problem(error, data, node, cls, source, label) for error in exc.errors()
        ]


def _label(data: Mapping[str, Any], index: int) -> str:
    kind = data.get("kind")
    meta = data.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if isinstance(kind, str) and isinstance(name, str) and name:
        return f"{kind}/{name}"
    if isinstance(kind, str):
        return f"{kind} (document {index}, no name)"
    return f"document {index}"


# ----------------------------------------------------------------------------------------------
# Translating pydantic errors
# ----------------------------------------------------------------------------------------------


def _problem(
    error: ErrorDetails,
    data: Any,
    node: yaml.Node,
    cls: type[api.Resource],
    source: str,
    label: str,
) -> ManifestProblem:
    path = _yaml_path(data, error["loc"])
    kind = error["type"]
    ctx = error.get("ctx") or {}
    given = _show(error["input"])
    if kind == "missing":
        given, allowed = _MISSING, "a value (required)"
    elif kind == "extra_forbidden":
        names = _field_names(cls, path[:-1])
        allowed = f"no field {path[-1]!r} here; known fields: {', '.join(names) or 'none'}"
    elif kind == "union_tag_invalid":
        path, given = [*path, "type"], _show(ctx.get("tag"))
        allowed = f"one of {ctx.get('expected_tags')}"
    elif kind == "union_tag_not_found":
        path, given = [*path, ctx.get("discriminator", "'type'").strip("'")], _MISSING
        allowed = "a type: lognormal, empirical or fixed"
    else:
        allowed = _allowed(error["msg"])
    line = _line_of(node, path) or node.start_mark.line + 1
    return ManifestProblem(source, label, _render(path), given, allowed, line)


def _yaml_path(data: Any, loc: Sequence[int | str]) -> list[int | str]:
    """pydantic's location → the path in the document (drops union tags such as ``lognormal``)."""
    path: list[int | str] = []
    current = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(current, Mapping):
            if part in current:
                current = current[part]
            elif not last and current.get("type") == part:
                continue  # the tag pydantic inserts for a discriminated union
            else:
                current = None
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            current = current[part]
        else:
            current = None
        path.append(part)
    return path


def _render(path: Sequence[int | str]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


_PYDANTIC_LEAD = re.compile(r"^(?:Value error, |Assertion failed, |\w+ should (?:be )?)")


def _allowed(message: str) -> str:
    """``Input should be greater than 0`` → ``greater than 0``."""
    return _PYDANTIC_LEAD.sub("", message, count=1)


def _show(value: Any) -> str:
    """A short, YAML-flavoured rendering of a given value."""
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str, separators=(", ", ": "))
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _field_names(cls: type[api.Resource], path: Sequence[int | str]) -> list[str]:
    """The camelCase field names accepted at ``path`` (walks the model's JSON schema)."""
    from prfaas.operator.api.crds import structural_schema

    schema = structural_schema(cls.model_json_schema(by_alias=True))
    for part in path:
        if isinstance(part, int):
            schema = schema.get("items", {})
        else:
            schema = schema.get("properties", {}).get(part, {})
    return list(schema.get("properties", {}))


def _duplicate_keys(
    node: yaml.Node, path: list[int | str]
) -> list[tuple[list[int | str], int]]:
    """Keys given twice in one mapping (YAML loaders silently keep the last)."""
    found: list[tuple[list[int | str], int]] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else str(key)
            if name in seen:
                found.append(([*path, name], key.start_mark.line + 1))
            seen.add(name)
            found += _duplicate_keys(value, [*path, name])
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found += _duplicate_keys(item, [*path, i])
    return found


def _line_of(node: yaml.Node, path: Sequence[int | str]) -> int | None:
    """1-based line of the deepest node of ``path`` that exists in the YAML."""
    line: int | None = None
    for part in path:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == part:
                    child = value
                    line = key.start_mark.line + 1
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            return line
        node = child
    return line


# ----------------------------------------------------------------------------------------------
# Checks across documents
# ----------------------------------------------------------------------------------------------


def _check_together(out: Manifests) -> None:
    """Duplicate objects are problems; dangling references are warnings (they may already exist
    in the cluster)."""
    seen: dict[tuple[str, str | None, str], int] = {}
    for resource in out.resources:
        key = (resource.KIND, resource.metadata.namespace, resource.metadata.name)
        seen[key] = seen.get(key, 0) + 1
    for (kind, _ns, name), count in seen.items():
        if count > 1:
            out.problems.append(
                ManifestProblem(
                    "(all files)",
                    f"{kind}/{name}",
                    "metadata.name",
                    f"{count} objects with this name",
                    "one object per kind and name (a later one would replace the earlier)",
                )
            )
    _check_references(out)


def _check_references(out: Manifests) -> None:
    """Warn when a plan names clusters, or needs a link, that these files do not define."""
    prefill = {c.metadata.name: c for c in out.of_kind(api.PrefillCluster)}
    decode = {c.metadata.name: c for c in out.of_kind(api.DecodeCluster)}
    links = {(link.spec.from_, link.spec.to) for link in out.of_kind(api.InterDCLink)}
    if not prefill and not decode:
        return
    for plan in out.of_kind(api.ServingPlan):
        label = f"ServingPlan/{plan.metadata.name}"
        refs = plan.spec.clusters
        known_by_role: tuple[tuple[str, list[str], Mapping[str, Any]], ...] = (
            ("prefill", refs.prefill, prefill),
            ("decode", refs.decode, decode),
        )
        for role, names, known in known_by_role:
            for i, name in enumerate(names):
                if name not in known:
                    out.warnings.append(
                        ManifestProblem(
                            "(all files)",
                            label,
                            f"spec.clusters.{role}[{i}]",
                            _show(name),
                            f"a {role.capitalize()}Cluster defined in these files "
                            f"({', '.join(known) or 'none'}) or already in the cluster",
                        )
                    )
        for p in refs.prefill:
            for d in refs.decode:
                if p not in prefill or d not in decode or not links:
                    continue
                pair = (prefill[p].spec.datacenter, decode[d].spec.datacenter)
                if pair[0] != pair[1] and pair not in links:
                    out.warnings.append(
                        ManifestProblem(
                            "(all files)",
                            label,
                            "spec.clusters",
                            f"{p} ({pair[0]}) → {d} ({pair[1]})",
                            f"an InterDCLink from {pair[0]} to {pair[1]} to carry KV",
                        )
                    )
