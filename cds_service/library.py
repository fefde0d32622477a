"""The policy library: policy documents, value sets and the payer registry, from disk.

Every document is validated against its JSON Schema and cross-checked (unknown
value sets, predicates or questionnaire items, duplicate criterion IDs, route
targets) at start-up; any problem stops the service with the file and the place.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Iterable, Mapping

import yaml
from jsonschema import Draft202012Validator, FormatChecker

from .sansio.codes import ValueSet, ValueSets
from .sansio.engine import PREDICATES
from .sansio.policy import Policy, build_policy
from .sansio import predicates as _predicates  # noqa: F401  (registers predicates)

VALUE_SET_PARAMS = ("value_set", "value_sets", "unless", "unless_present", "diagnosis")
# Predicates that read a questionnaire item: the params key naming it, else the node's own ID.
ITEM_PREDICATES = {
    "attestation": "item", "attested_at_least": "item", "hypoxemia_signs": "item",
    "improvement_on_o2": "item", "both_or_attestation": "item", "pulmonary_hypertension": "item",
    "nocturnal_group1": "item", "prior_authorizations": "item", "physician_evaluation": "item",
    "diagnosis_or_attestation": "attestations",
}


class _Loader(yaml.SafeLoader):
    """YAML without implicit timestamps: dates stay strings, as JSON Schema expects."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class PolicyError(Exception):
    """A policy-library file is invalid; the message names the file and the place."""


@dataclass(frozen=True)
class Payer:
    id: str
    name: str
    policies: tuple[str, ...]
    pa_needed: str


@dataclass
class Library:
    payers: dict[str, Payer]
    policies: list[Policy]
    valuesets: ValueSets
    root: Path | None = None
    documents: dict[str, dict] = field(default_factory=dict)

    def policy_for(self, payer: Payer, code: str, t0: date) -> tuple[Policy | None, str | None]:
        """The revision governing a code for a payer on T0, or (None, why not)."""
        governing = [p for p in self.policies if p.payer == payer.id and p.policy_id in payer.policies and p.role_of(code)]
        if not governing:
            return None, f"no payer policy on file for {code}"
        in_effect = [p for p in governing if p.in_effect(t0)]
        if not in_effect:
            return None, f"no revision of {governing[0].policy_id} in effect on {t0.isoformat()}"
        return max(in_effect, key=lambda p: p.effective_start), None

    def by_prefix(self, prefix: str) -> Policy | None:
        return next((p for p in self.policies if p.prefix == prefix), None)


def _schema(root: Path, name: str) -> Draft202012Validator:
    with open(root / "schema" / name, encoding="utf-8") as fh:
        return Draft202012Validator(json.load(fh), format_checker=FormatChecker())


def _read(path: Path) -> object:
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.load(fh, Loader=_Loader) if path.suffix in (".yaml", ".yml") else json.load(fh)
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: not valid YAML/JSON: {exc}") from exc


def _validate(validator: Draft202012Validator, data: object, path: Path) -> None:
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "(document root)"
        raise PolicyError(f"{path}: schema error at {where}: {e.message}")


_CACHE: dict[tuple, Library] = {}


def cached_library(root: Path | str, extra_policy_files: Iterable[Path | str] = ()) -> Library:
    """load_library, reused while no file under the library changed (a Library is read-only)."""
    root = Path(root).resolve()
    extras = tuple(str(Path(f).resolve()) for f in extra_policy_files)
    stamp = tuple(sorted((str(p), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()))
    stamp += tuple((f, Path(f).stat().st_mtime_ns) for f in extras if Path(f).exists())
    key = (str(root), extras, stamp)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = load_library(root, extras)
    return _CACHE[key]


def load_library(root: Path | str, extra_policy_files: Iterable[Path | str] = ()) -> Library:
    root = Path(root)
    payers_doc = _read(root / "payers.yaml")
    _validate(_schema(root, "payers.schema.json"), payers_doc, root / "payers.yaml")
    payers = {p["id"]: Payer(p["id"], p["name"], tuple(p["policies"]), p["pa_needed"]) for p in payers_doc["payers"]}

    vs_validator = _schema(root, "valuesets.schema.json")
    sets: dict[str, ValueSet] = {}
    for path in sorted((root / "valuesets").glob("*.yaml")):
        doc = _read(path) or {}
        _validate(vs_validator, doc, path)
        for vs_id, data in doc.items():
            if vs_id in sets:
                raise PolicyError(f"{path}: value set {vs_id} is defined twice")
            sets[vs_id] = ValueSet.from_data(vs_id, data)
    for vs in sets.values():
        for inner in vs.includes:
            if inner not in sets:
                raise PolicyError(f"value set {vs.id} includes unknown value set {inner}")
    valuesets = ValueSets(sets)

    validator = _schema(root, "policy.schema.json")
    files = sorted(p for p in root.rglob("*.yaml") if p.parent != root / "valuesets" and p.name != "payers.yaml")
    files += [Path(f) for f in extra_policy_files]
    policies, documents, prefixes = [], {}, {}
    for path in files:
        doc = _read(path)
        _validate(validator, doc, path)
        try:
            policy = build_policy(doc, str(path))
        except ValueError as exc:
            raise PolicyError(f"{path}: {exc}") from exc
        _cross_check(policy, doc, valuesets, payers, path)
        if policy.prefix in prefixes:
            raise PolicyError(f"{path}: prefix {policy.prefix} already defined in {prefixes[policy.prefix]}")
        prefixes[policy.prefix] = path
        policies.append(policy)
        documents[policy.prefix] = doc
    return Library(payers, policies, valuesets, root, documents)


def _cross_check(policy: Policy, doc: Mapping, valuesets: ValueSets, payers: Mapping, path: Path) -> None:
    def fail(where: str, msg: str) -> None:
        raise PolicyError(f"{path}: at {where}: {msg}")

    if policy.payer not in payers:
        fail("payer", f"unknown payer {policy.payer!r}")
    for i, rule in enumerate(policy.route):
        if rule.to not in policy.sections:
            fail(f"route/{i}/to", f"unknown section {rule.to!r}")
        for s in rule.with_:
            if s not in policy.sections:
                fail(f"route/{i}/with", f"unknown section {s!r}")
        for j, cond in enumerate(rule.when):
            _check_call(cond["predicate"], cond.get("params") or {}, valuesets, f"route/{i}/when/{j}", fail)
    for vs in policy.episode_members.get("medication_value_sets", []):
        if vs not in valuesets:
            fail("episode_members", f"unknown value set {vs!r}")
    for adv in policy.advisories:
        for key in ("diagnosis", "not_diagnosis"):
            vs = (adv.get("when") or {}).get(key)
            if vs and vs not in valuesets:
                fail(f"advisories/{adv['code']}", f"unknown value set {vs!r}")
    for node in policy.all_nodes():
        where = node.id
        if node.predicate:
            _check_call(node.predicate, node.params, valuesets, where, fail)
            key = ITEM_PREDICATES.get(node.predicate)
            if key:
                items = node.params.get(key) or [node.id.split("/", 1)[1]]
                for item in [items] if isinstance(items, str) else items:
                    if policy.qualify(item) not in policy.items:
                        fail(where, f"questionnaire item {item!r} is not in the questionnaire")
            for ref_key in ("block", "node"):
                ref = node.params.get(ref_key)
                if ref and not policy.has_node(ref):
                    fail(where, f"unknown node {ref!r}")


def _check_call(name: str, params: Mapping, valuesets: ValueSets, where: str, fail) -> None:
    if name not in PREDICATES:
        fail(where, f"unknown predicate {name!r}")
    for key in VALUE_SET_PARAMS:
        value = params.get(key)
        for vs in [value] if isinstance(value, str) else value or []:
            if vs not in valuesets:
                fail(where, f"unknown value set {vs!r}")
