"""Unit tests of the sans-I/O building blocks: dates, value sets, Kleene logic, attestations."""
from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from cds_service.library import load_library
from cds_service.sansio.attestations import Attestations
from cds_service.sansio.codes import ICD10CM, SNOMED, ValueSets
from cds_service.sansio.dates import PartialDate, age_at_least, completed_years, parse_partial
from cds_service.sansio.logic import Tri, all_of, any_of, none_of

REPO = Path(__file__).resolve().parents[1]
T, F, U = Tri.TRUE, Tri.FALSE, Tri.UNKNOWN


# -- dates (§2.3 age, INT-02, §13.10) ----------------------------------------------------------
@pytest.mark.parametrize("on, years", [
    (date(2021, 2, 27), 20),
    (date(2021, 2, 28), 20),  # no 29 February in 2021: the birthday is reached on 1 March
    (date(2021, 3, 1), 21),
    (date(2024, 2, 28), 23),
    (date(2024, 2, 29), 24),  # leap year: the birthday itself
])
def test_completed_years_for_a_29_february_birthday(on, years):
    assert completed_years(date(2000, 2, 29), on) == years


@pytest.mark.parametrize("birth, on, years", [
    (date(2004, 6, 1), date(2025, 6, 1), 21),  # a member is 21 on their 21st birthday
    (date(2004, 6, 2), date(2025, 6, 1), 20),
    (date(2004, 12, 31), date(2025, 1, 1), 20),
])
def test_completed_years_turn_on_the_birthday(birth, on, years):
    assert completed_years(birth, on) == years


@pytest.mark.parametrize("text, expected", [
    ("1960", True),
    ("2004-05", True),
    ("2004-05-31", True),
    ("2004-06-01", True),
    ("2004-06-02", False),
    ("2005", False),
    ("2004", None),  # 2004-01-01 → 21, 2004-12-31 → 20
    ("2004-06", None),  # 2004-06-01 → 21, 2004-06-30 → 20
])
def test_age_at_least_21_with_partial_birth_dates(text, expected):
    assert age_at_least(parse_partial(text), 21, date(2025, 6, 1)) is expected


def test_age_at_least_without_birth_date_is_unknown():
    assert age_at_least(None, 21, date(2025, 6, 1)) is None


def test_partial_date_bounds_cover_the_whole_period():
    feb = parse_partial("2024-02")
    assert feb == PartialDate(2024, 2)
    assert (feb.earliest, feb.latest) == (date(2024, 2, 1), date(2024, 2, 29))
    year = parse_partial("2023")
    assert (year.earliest, year.latest) == (date(2023, 1, 1), date(2023, 12, 31))
    assert parse_partial("2025-06-01T09:00:00-05:00") == PartialDate(2025, 6, 1)


@pytest.mark.parametrize("text", ["2004-13", "2023-02-29", "June 2004", "", None, 2004])
def test_invalid_birth_dates_are_unusable(text):
    assert parse_partial(text) is None


# -- value sets (§6) -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def valuesets() -> ValueSets:
    return load_library(REPO / "policies").valuesets


@pytest.mark.parametrize("vs, code, expected", [
    # SUD-ACTIVE: F10*–F16*, F18*, F19*, except F1x.11, F1x.21, F1x.91; F17 excluded.
    ("SUD-ACTIVE", "F11.20", True),
    ("SUD-ACTIVE", "F11.21", False),
    ("SUD-ACTIVE", "F10.11", False),
    ("SUD-ACTIVE", "F19.91", False),
    ("SUD-ACTIVE", "F16.10", True),
    ("SUD-ACTIVE", "F18.20", True),
    ("SUD-ACTIVE", "F17.210", False),
    # PREGNANCY: Z33.1, O00*–O9A* (range compared on the length of each end).
    ("PREGNANCY", "O9A.1", True),
    ("PREGNANCY", "O9A.111", True),
    ("PREGNANCY", "O99.89", True),
    ("PREGNANCY", "O00.0", True),
    ("PREGNANCY", "Z33.1", True),
    ("PREGNANCY", "Z33.2", False),
    ("PREGNANCY", "P00.0", False),
    # COAG: D65–D67, D68.0*–D68.4*, D68.8, D68.9 — not D68.5*, D68.6* (INT-25).
    ("COAG", "D68.51", False),
    ("COAG", "D68.62", False),
    ("COAG", "D68.4", True),
    ("COAG", "D68.311", True),
    ("COAG", "D66", True),
    ("COAG", "D68.8", True),
    ("COAG", "D69.6", False),
    # O2-INDICATION includes PH, COR-PULMONALE and HF.
    ("O2-INDICATION", "I27.81", True),
    ("O2-INDICATION", "I27.20", True),
    ("O2-INDICATION", "I50.9", True),
    ("O2-INDICATION", "J44.9", True),
    ("O2-INDICATION", "I20.9", False),
    ("COR-PULMONALE", "I27.81", True),
    ("PH", "I27.81", False),
    # ACUTE-RESP: J12*–J18* range and listed exacerbation codes only.
    ("ACUTE-RESP", "J18.9", True),
    ("ACUTE-RESP", "J12.82", True),
    ("ACUTE-RESP", "J11.1", False),
    ("ACUTE-RESP", "J19", False),
    ("ACUTE-RESP", "J44.1", True),
    ("ACUTE-RESP", "J44.9", False),
    ("CH", "G44.009", True),
    ("CH", "G44.1", False),
])
def test_icd10_membership(valuesets, vs, code, expected):
    assert valuesets.contains(vs, ICD10CM, code) is expected


@pytest.mark.parametrize("code", ["j44.9", "J449", " J44.9 "])
def test_icd10_matching_ignores_dots_and_case(valuesets, code):
    assert valuesets.contains("O2-INDICATION", ICD10CM, code)


def test_snomed_codes_and_systems_are_not_mixed(valuesets):
    assert valuesets.contains("O2-INDICATION", SNOMED, "13645005")
    assert valuesets.contains("O2-INDICATION", SNOMED, "83291003")  # cor pulmonale, via COR-PULMONALE
    assert not valuesets.contains("O2-INDICATION", SNOMED, "J44.9")
    assert not valuesets.contains("O2-INDICATION", "http://example.org/other", "J44.9")


def test_concept_matching_by_ingredient_name(valuesets):
    concept = {"text": "Morphine sulfate 10 mg/mL injection"}
    assert valuesets.matches_concept("OPIOID", concept)
    assert not valuesets.matches_concept("OPIOID", {"text": "baclofen intrathecal"})
    assert valuesets.matches_concept("OPIOID", {"coding": [
        {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "7052"}]})


# -- Kleene logic (§10.1) ------------------------------------------------------------------------
ALL_TABLE = {
    (T, T): T, (T, U): U, (T, F): F,
    (U, T): U, (U, U): U, (U, F): F,
    (F, T): F, (F, U): F, (F, F): F,
}
ANY_TABLE = {
    (T, T): T, (T, U): T, (T, F): T,
    (U, T): T, (U, U): U, (U, F): U,
    (F, T): T, (F, U): U, (F, F): F,
}
NONE_TABLE = {  # exclusions: FALSE when any member applies
    (T, T): F, (T, U): F, (T, F): F,
    (U, T): F, (U, U): U, (U, F): U,
    (F, T): F, (F, U): U, (F, F): T,
}


@pytest.mark.parametrize("pair", list(ALL_TABLE))
def test_all_of_kleene_table(pair):
    assert all_of(pair) == ALL_TABLE[pair]


@pytest.mark.parametrize("pair", list(ANY_TABLE))
def test_any_of_kleene_table(pair):
    assert any_of(pair) == ANY_TABLE[pair]


@pytest.mark.parametrize("pair", list(NONE_TABLE))
def test_none_of_kleene_table(pair):
    assert none_of(pair) == NONE_TABLE[pair]


def test_combinators_accept_generators_and_single_values():
    assert all_of(v for v in (T, T, T)) == T
    assert any_of(v for v in (F, F, U)) == U
    assert none_of(v for v in (F, F, F)) == T
    assert (all_of([U]), any_of([U]), none_of([U])) == (U, U, U)


def test_negation_keeps_unknown():
    assert (~T, ~F, ~U) == (F, T, U)
    assert Tri.of(True) == T and Tri.of(False) == F and Tri.of(None) == U


# -- attestations (§9.1, §9.2) -------------------------------------------------------------------
PREFIX = "CP.MP.190-2023"
T0 = date(2025, 6, 1)
TODAY = date(2025, 12, 31)


def qr(id, authored, items, status="completed"):
    out = {"resourceType": "QuestionnaireResponse", "id": id, "status": status, "item": items}
    if authored is not None:
        out["authored"] = authored
    return out


def item(link, *answers, children=None):
    out = {"linkId": link if "/" in link else f"{PREFIX}/{link}"}
    if answers:
        out["answer"] = list(answers)
    if children:
        out["item"] = children
    return out


def att(*responses, t0=T0, today=TODAY):
    return Attestations(list(responses), PREFIX, t0, today)


def test_latest_authored_response_wins_whatever_the_order():
    older = qr("qr-old", "2025-05-20T10:00:00-05:00", [item("I.E", {"valueBoolean": True})])
    newer = qr("qr-new", "2025-05-25T10:00:00-05:00", [item("I.E", {"valueBoolean": False})])
    for responses in ((older, newer), (newer, older)):
        ans = att(*responses).get("I.E", "boolean")
        assert ans.value is False
        assert ans.source == "QuestionnaireResponse/qr-new"
        assert not ans.stale


def test_same_day_responses_are_ordered_by_time():
    morning = qr("qr-am", "2025-05-25T08:00:00-05:00", [item("I.E", {"valueBoolean": False})])
    evening = qr("qr-pm", "2025-05-25T18:00:00-05:00", [item("I.E", {"valueBoolean": True})])
    assert att(evening, morning).get("I.E", "boolean").value is True


def test_items_match_at_any_depth():
    nested = qr("qr-1", "2025-05-25", [
        item("group-1", children=[item("group-2", children=[item("I.F.1", {"valueBoolean": True})])]),
        item("I.A", {"valueBoolean": True, "item": [item("I.E", {"valueBoolean": True})]}),
    ])
    a = att(nested)
    assert a.get("I.F.1", "boolean").value is True
    assert a.get("I.E", "boolean").value is True  # nested under an answer


def test_first_answer_of_an_item_counts():
    a = att(qr("qr-1", "2025-05-25", [item("I.E", {"valueBoolean": True}, {"valueBoolean": False})]))
    assert a.get("I.E", "boolean").value is True


@pytest.mark.parametrize("answer, kind", [
    ({"valueString": "yes"}, "boolean"),
    ({"valueInteger": 1}, "boolean"),
    ({"valueBoolean": True}, "integer"),
    ({"valueDecimal": 5.0}, "integer"),
    ({"valueString": "2025-05-01"}, "date"),
    ({"valueCoding": {"code": "Y"}}, "boolean"),
])
def test_answers_of_the_wrong_type_are_ignored(answer, kind):
    assert att(qr("qr-1", "2025-05-25", [item("VI.A.1", answer)])).get("VI.A.1", kind) is None


def test_a_wrong_type_answer_does_not_hide_an_earlier_valid_one():
    older = qr("qr-old", "2025-05-20", [item("I.E", {"valueBoolean": True})])
    newer = qr("qr-new", "2025-05-25", [item("I.E", {"valueString": "no"})])
    ans = att(older, newer).get("I.E", "boolean")
    assert ans.value is True and ans.source == "QuestionnaireResponse/qr-old"


@pytest.mark.parametrize("answer, kind, expected", [
    ({"valueInteger": 5}, "integer", 5),
    ({"valueInteger": 3}, "decimal", 3.0),
    ({"valueDecimal": 42.5}, "decimal", 42.5),
    ({"valueDate": "2025-03-01"}, "date", date(2025, 3, 1)),
    ({"valueDateTime": "2025-03-01T23:30:00-05:00"}, "date", date(2025, 3, 1)),  # date part as written
])
def test_accepted_answer_types(answer, kind, expected):
    assert att(qr("qr-1", "2025-05-25", [item("X", answer)])).get("X", kind).value == expected


@pytest.mark.parametrize("authored, stale", [
    ("2025-03-03T10:00:00-05:00", False),  # T0 − 90
    ("2025-03-02T23:59:00-05:00", True),  # T0 − 91
    ("2025-12-31", False),  # today
    ("2026-01-01", True),  # after today
    (None, True),  # undated
])
def test_f90_freshness_window(authored, stale):
    ans = att(qr("qr-1", authored, [item("I.E", {"valueBoolean": True})])).get("I.E", "boolean", "F90")
    assert ans is not None
    assert ans.stale is stale


def test_a_fresh_older_answer_is_not_shadowed_by_a_stale_future_one():
    fresh = qr("qr-ok", "2025-05-20", [item("I.E", {"valueBoolean": True})])
    future = qr("qr-future", "2026-02-01", [item("I.E", {"valueBoolean": False})])
    ans = att(fresh, future).get("I.E", "boolean", "F90")
    assert (ans.value, ans.stale, ans.source) == (True, False, "QuestionnaireResponse/qr-ok")


def test_any_freshness_counts_old_and_undated_answers():
    old = qr("qr-old", "2019-01-01", [item("VI.A.1", {"valueInteger": 6})])
    ans = att(old).get("VI.A.1", "integer", "ANY")
    assert (ans.value, ans.stale) == (6, False)
    undated = qr("qr-undated", None, [item("III.A#eval", {"valueDate": "2025-04-01"})])
    assert att(undated).get("III.A#eval", "date", "ANY").value == date(2025, 4, 1)


def test_only_this_revisions_link_ids_count():
    other = qr("qr-1", "2025-05-25", [item("CP.MP.190-2022/I.E", {"valueBoolean": True}),
                                      item("I.E-not-a-prefix", {"valueBoolean": True})])
    a = att(other)
    assert a.get("I.E", "boolean") is None
    assert a.get(f"{PREFIX}/I.E", "boolean") is None


@pytest.mark.parametrize("status, counts", [("completed", True), ("amended", True),
                                            ("in-progress", False), ("stopped", False)])
def test_only_completed_or_amended_responses_count(status, counts):
    a = att(qr("qr-1", "2025-05-25", [item("I.E", {"valueBoolean": True})], status=status))
    assert (a.get("I.E", "boolean") is not None) is counts


def test_unanswered_item_is_none():
    a = att(qr("qr-1", "2025-05-25", [item("I.E")]))
    assert a.get("I.E", "boolean") is None
    assert a.get("I.F.1", "boolean") is None
