"""The policy library: schema validation, cross-checks, revision selection, extra revisions."""
from __future__ import annotations

import copy
import shutil
from datetime import date, datetime, timezone
from pathlib import Path

import pytest
import yaml

from cds_service import create_app
from cds_service.library import PolicyError, load_library
from conftest import EXAMPLES, REPO, load_json

POLICIES = REPO / "policies"
EXTRA_REVISION = REPO / "tests" / "data" / "CP.MP.190-2026.yaml"
POLICY_FILE = "cp-mp-190/CP.MP.190-2023.yaml"


@pytest.fixture
def library_copy(tmp_path) -> Path:
    dest = tmp_path / "policies"
    shutil.copytree(POLICIES, dest)
    return dest


def edit_policy(root: Path, change) -> Path:
    path = root / POLICY_FILE
    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return path


def test_bundled_library_loads():
    lib = load_library(POLICIES)
    prefixes = {p.prefix for p in lib.policies}
    assert "CP.MP.190-2023" in prefixes
    policy = lib.by_prefix("CP.MP.190-2023")
    assert policy.node("I.B.1.a").text.startswith("An arterial PO2 at or below 55 mm Hg")
    # every criterion carries the policy text it encodes
    assert all(node.text for node in policy.all_nodes())


def test_revision_selection_by_order_date():
    lib = load_library(POLICIES)
    payer = lib.payers["centene"]
    policy, _ = lib.policy_for(payer, "E1390", date(2023, 1, 1))
    assert policy.prefix == "CP.MP.190-2023"
    assert lib.policy_for(payer, "E0445", date(2024, 1, 1)) == (None, "no payer policy on file for E0445")
    assert lib.policy_for(lib.payers["centene-medicare"], "E1390", date(2024, 1, 1))[0] is None


@pytest.mark.parametrize(
    "change,needle",
    [
        (lambda d: d.pop("title"), "'title' is a required property"),
        (lambda d: d["criteria"][0]["children"][0].update(predicate=17), "criteria/0/children/0/predicate"),
        (lambda d: d["criteria"][0]["children"][0]["params"].update(value_sets=["NO-SUCH-SET"]), "unknown value set 'NO-SUCH-SET'"),
        (lambda d: d["criteria"][0]["children"][4].update(id="I.A"), "duplicate criterion ID CP.MP.190-2023/I.A"),
        (lambda d: d["criteria"][0]["children"][0].update(predicate="no_such_predicate"), "unknown predicate 'no_such_predicate'"),
        (lambda d: d["route"][0].update(to="IX"), "route/0/to"),
        (lambda d: d["questionnaire"].pop(10), "questionnaire item 'I.E'"),
        (lambda d: d.update(revision="2023"), "revision"),
    ],
    ids=["missing-title", "bad-type", "unknown-value-set", "duplicate-id", "unknown-predicate", "bad-route", "missing-item", "bad-revision"],
)
def test_invalid_policy_stops_start_up_naming_file_and_place(library_copy, change, needle):
    path = edit_policy(library_copy, change)
    with pytest.raises(PolicyError) as err:
        create_app({"POLICY_DIR": str(library_copy)})
    assert str(path) in str(err.value)
    assert needle in str(err.value)


def test_invalid_value_set_file_is_reported(library_copy):
    (library_copy / "valuesets" / "broken.yaml").write_text("X:\n  include: [{system: snomed}]\n")
    with pytest.raises(PolicyError) as err:
        load_library(library_copy)
    assert "broken.yaml" in str(err.value)


def test_cli_reports_invalid_library(library_copy, capsys):
    from cds_service.cli import main

    edit_policy(library_copy, lambda d: d.pop("url"))
    code = main(["--policies", str(library_copy), "evaluate", str(EXAMPLES / "cp-mp-190-2023/01-adult-rest-spo2-88-e1390.json")])
    assert code == 2
    assert "'url' is a required property" in capsys.readouterr().err


def _rest_spo2_89(authored: str) -> dict:
    body = load_json(EXAMPLES / "cp-mp-190-2023/01-adult-rest-spo2-88-e1390.json")
    order = body["context"]["draftOrders"]["entry"][0]["resource"]
    order["authoredOn"] = authored
    for entry in body["prefetch"]["observations"]["entry"]:
        obs = entry["resource"]
        if obs.get("valueQuantity", {}).get("code") == "%":
            obs["valueQuantity"]["value"] = 89
            obs["effectiveDateTime"] = authored
    for entry in body["prefetch"]["questionnaireResponses"]["entry"]:
        entry["resource"]["authored"] = authored
    return body


def test_extra_revision_file_needs_no_python_change():
    """A revision reusing existing predicates (a hypothetical 01/26 with SpO2 ≤ 89 in I.B.1.a) just loads."""
    now = datetime(2026, 6, 30, tzinfo=timezone.utc)
    app = create_app({"EXTRA_POLICY_FILES": [str(EXTRA_REVISION)], "CLOCK": lambda: now})
    client = app.test_client()

    def evaluate(authored):
        card = client.post("/cds-services/order-sign-crd", json=_rest_spo2_89(authored)).get_json()["cards"][0]
        return card["extension"]["cds-coverage.evaluation"]

    new = evaluate("2026-03-02")
    assert new["revision"] == "CP.MP.190-2026"
    assert {c["id"]: c["value"] for c in new["criteria"]}["CP.MP.190-2026/I.B.1.a"] == "TRUE"
    old = evaluate("2025-03-03")
    assert old["revision"] == "CP.MP.190-2023"
    assert {c["id"]: c["value"] for c in old["criteria"]}["CP.MP.190-2023/I.B.1.a"] == "FALSE"
    # The questionnaire of the new revision is served too.
    assert client.get("/fhir/Questionnaire/CP.MP.190-2026").status_code == 200
