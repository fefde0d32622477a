"""Property tests of the engine (Hypothesis), through the pure core ``sansio.hook.process``."""
from __future__ import annotations

import copy
import itertools
import uuid
from datetime import date

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import builders as b
from cds_service.library import load_library
from cds_service.sansio.hook import PrefetchSource, Settings, process
from conftest import REPO

LIBRARY = load_library(REPO / "policies")
TODAY = date(2025, 12, 31)
PROFILE = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def run(body: dict) -> dict:
    counter = itertools.count()
    result = process(copy.deepcopy(body), LIBRARY, PrefetchSource(body.get("prefetch")), TODAY, Settings(),
                     uuid_factory=lambda: uuid.UUID(int=next(counter)))
    return result.body


def determination(body: dict) -> str:
    return run(body)["cards"][0]["extension"]["cds-coverage.evaluation"]["determination"]


contexts = st.sampled_from(["REST", "EXERCISE", "SLEEP", "AFTER_EXERCISE", None])
o2s = st.sampled_from(["room", "on", None])
days = st.integers(min_value=0, max_value=400)


@st.composite
def oxygen_test(draw, room_air_only=False):
    kind = draw(st.sampled_from(["spo2", "pao2"]))
    when = b.before(draw(days))
    o2 = "room" if room_air_only else draw(o2s)
    context = draw(contexts)
    if kind == "spo2":
        minutes = draw(st.none() | st.floats(min_value=0, max_value=300, allow_nan=False))
        components = {"minutes-spo2-le-88": minutes, "minutes-spo2-le-89": minutes} if minutes is not None else None
        return b.spo2(draw(st.integers(70, 100)), when, context, o2, components=components,
                      at=draw(st.sampled_from(["08:00", "09:30", "14:00"])))
    unit = draw(st.sampled_from(["mm[Hg]", "kPa"]))
    value = draw(st.floats(min_value=35, max_value=100, allow_nan=False))
    return b.pao2(round(value / 7.50062, 2) if unit == "kPa" else round(value, 1), when, unit, context, o2)


conditions = st.lists(st.sampled_from(["J44.9", "I50.9", "R60.0", "I27.0", "D75.1", "I20.9", "R06.02", "G44.009", "J18.9"]),
                      max_size=4, unique=True)
answers = st.dictionaries(st.sampled_from(["I.E", "I.F.1", "I.D.2", "I.B.1.d#improve", "I.B.2.b.i", "II.A", "II.C", "II.B.3"]),
                          st.booleans(), max_size=6)
codes = st.sampled_from(["E1390", "E0431", "E1392", "E0439", "E0424"])
births = st.sampled_from(["1950-03-02", "2004-06-01", "2004-06-02", "2015-01-01", "1980"])


@st.composite
def order_request(draw, room_air_only=False):
    return b.request(
        order_code=draw(codes), birth_date=draw(births),
        observations=draw(st.lists(oxygen_test(room_air_only), max_size=5)),
        conditions=[b.condition(c, onset=b.before(200)) for c in draw(conditions)],
        questionnaire_answers=draw(answers),
        reason_codes=(),
    )


@PROFILE
@given(order_request())
def test_any_valid_observation_set_evaluates_deterministically(body):
    first, second = run(body), run(body)
    assert first == second
    assert first["cards"][0]["extension"]["cds-coverage.evaluation"]["determination"] in {
        "SUPPORTED", "NOT_MEDICALLY_NECESSARY", "INSUFFICIENT_DOCUMENTATION", "NOT_APPLICABLE"}


def _oxygen_observations(body):
    for entry in body["prefetch"]["observations"]["entry"]:
        res = entry["resource"]
        codes = {c["code"] for c in res.get("code", {}).get("coding", [])}
        if res["resourceType"] == "Observation" and codes & {"59408-5", "2703-7"}:
            yield res


@st.composite
def likely_supported(draw):
    """An adult COPD member with attestations and a qualifying resting test, plus random room-air tests."""
    qualifying = draw(st.sampled_from([
        b.spo2(draw(st.integers(75, 88)), b.before(draw(st.integers(1, 60))), "REST", "room"),
        b.pao2(draw(st.integers(40, 55)), b.before(draw(st.integers(1, 60))), "mm[Hg]", "REST", "room"),
    ]))
    return b.request(
        order_code=draw(codes), birth_date="1950-03-02",
        observations=[qualifying] + draw(st.lists(oxygen_test(room_air_only=True), max_size=4)),
        conditions=[b.condition(c, onset=b.before(200)) for c in draw(conditions)],
        questionnaire_answers={"I.E": True, "I.F.1": True, "I.D.2": True},
    )


@PROFILE
@given(likely_supported(), st.data())
def test_lowering_a_room_air_value_never_withdraws_support(body, data):
    if determination(body) != "SUPPORTED":
        return
    lowered = copy.deepcopy(body)
    for obs in _oxygen_observations(lowered):
        delta = data.draw(st.floats(min_value=0, max_value=10, allow_nan=False))
        obs["valueQuantity"]["value"] = round(obs["valueQuantity"]["value"] - delta, 2)
    assert determination(lowered) == "SUPPORTED"


@PROFILE
@given(likely_supported() | order_request())
def test_adding_a_valid_qualifying_test_never_makes_an_order_not_medically_necessary(body):
    before = determination(body)
    extra = copy.deepcopy(body)
    extra["prefetch"]["observations"]["entry"].append(
        {"resource": b.spo2(85, b.before(5), "REST", "room", at="07:00")})
    extra["prefetch"]["observations"]["entry"].append(
        {"resource": b.pao2(50, b.before(5), "mm[Hg]", "REST", "room", at="07:05")})
    after = determination(extra)
    if before == "SUPPORTED":
        assert after == "SUPPORTED"
    assert not (before != "NOT_MEDICALLY_NECESSARY" and after == "NOT_MEDICALLY_NECESSARY"
                and before != "NOT_APPLICABLE")


# -- INT-17 pairing: the indexed search answers as the pairwise definition does -----------------------
def _improvement_pairwise(tests):
    """The rule as written (every room-air exercise test against every on-O2 one): the reference."""
    from cds_service.sansio.evidence import EXERCISE, ON_O2

    tests = [t for t in tests if t.context == EXERCISE]
    room = [t for t in tests if t.o2 != ON_O2]
    on = [t for t in tests if t.o2 == ON_O2]
    pairs = [(r, o) for r in room for o in on if o.kind == r.kind and o.same_session(r)]
    for r, o in pairs:
        lowest = min((t for t in room if t.kind == r.kind and t.same_session(o)), key=lambda t: t.value)
        if o.value > lowest.value:
            return True, lowest, o
    return (False, *pairs[0]) if pairs else None


def _exercise_test(i, kind, day, session, o2, value, context):
    from datetime import date as _date

    from cds_service.sansio.evidence import OxygenTest

    d = _date(2025, 5, day)
    return OxygenTest(ref=f"Observation/t{i}", kind=kind, code="x", value=value, date=d, instant=(d, f"0{i % 10}:00:00"),
                      context=context, o2=o2, performer_class="ACCEPTABLE", session=session)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["SAT", "PAO2"]), st.integers(1, 4), st.sampled_from([None, "Procedure/a", "Procedure/b"]),
                          st.sampled_from(["ROOM_AIR", "ON_O2", "UNKNOWN"]), st.integers(80, 95),
                          st.sampled_from(["EXERCISE", "EXERCISE", "REST"])), max_size=14))
def test_improvement_pairing_matches_the_pairwise_rule(specs):
    from cds_service.sansio.predicates.oxygen import improvement_pair

    tests = [_exercise_test(i, *spec) for i, spec in enumerate(specs)]
    assert improvement_pair(tests) == _improvement_pairwise(tests)
