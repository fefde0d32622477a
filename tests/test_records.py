"""The prefetch is read in place: resources are not copied, so nothing may change them, and an entry's
fullUrl still resolves references (``PrefetchSource.urls_by_id`` → ``Records.by_url``)."""
from __future__ import annotations

import copy
from datetime import date

from conftest import EXAMPLES, load_json

from cds_service.library import load_library
from cds_service.sansio.evidence import Extractor
from cds_service.sansio.hook import PrefetchSource, Settings, process
from cds_service.sansio.records import Records

import builders as b

LIBRARY = load_library(EXAMPLES.parent / "policies")


def test_evaluating_every_example_leaves_the_request_unchanged(example_index):
    for entry in example_index:
        request = load_json(EXAMPLES / entry["file"])
        before = copy.deepcopy(request)
        process(request, LIBRARY, PrefetchSource(request.get("prefetch")), date(2025, 12, 31), Settings())
        assert request == before, entry["file"]


def test_a_reference_to_an_entrys_full_url_resolves():
    """A performer referenced by its entry's urn:uuid fullUrl (no Type/id to go by) is found, and
    classifies the test (a DME supplier's test is invalid under Centene's rule)."""
    dme = {"resourceType": "Organization", "id": "org-dme",
           "type": [{"coding": [{"system": "http://nucc.org/provider-taxonomy", "code": "332B00000X"}]}]}
    obs = b.spo2(87, b.before(10), "REST", "room", id="obs-urn")
    obs["performer"] = [{"reference": "urn:uuid:6f1c0a56-7d8e-4c1e-9a55-0a6a3c3e0001"}]
    prefetch = {
        "observations": {"resourceType": "Bundle", "type": "searchset", "entry": [
            {"fullUrl": "https://ehr.example.org/fhir/Observation/obs-urn", "resource": obs},
            {"fullUrl": "urn:uuid:6f1c0a56-7d8e-4c1e-9a55-0a6a3c3e0001", "resource": dme},
        ]},
    }
    source = PrefetchSource(prefetch)
    resources = source.resources("observations")
    assert resources[0] is obs  # read in place
    records = Records.build(b.PATIENT_ID, [], resources, source.urls_by_id)
    assert records.resolve(obs["performer"][0], obs) is dme
    tests = Extractor(records, b.BASE, b.T0).oxygen_tests()
    assert [(t.ref, t.performer_class, sorted(t.performer_taxonomy)) for t in tests] == [
        ("Observation/obs-urn", "DME", ["332B00000X"])]
    # Without the fullUrls beside them the reference does not resolve: the performer is unknown.
    bare = Records.build(b.PATIENT_ID, [], resources)
    assert bare.resolve(obs["performer"][0], obs) is None
    assert Extractor(bare, b.BASE, b.T0).oxygen_tests()[0].performer_class == "UNKNOWN"


def test_observations_by_code_keep_record_order_and_each_once():
    first = b.spo2(88, b.before(3), "REST", "room", id="o1")
    both = b.spo2(90, b.before(2), "REST", "room", id="o2")
    both["code"]["coding"].append({"system": "http://loinc.org", "code": "2703-7"})
    hct = b.hematocrit(50, b.before(1), id="o3")
    records = Records.build(b.PATIENT_ID, [], [first, hct, both])
    ids = [o["id"] for o in records.observations_coded(frozenset({"59408-5", "2703-7"}))]
    assert ids == ["o1", "o2"]
    assert [o["id"] for o in records.observations_coded(frozenset({"4544-3"}))] == ["o3"]
    assert records.observations_coded(frozenset({"nothing"})) == []
