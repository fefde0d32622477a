"""Conformance checks for what the CRD service returns (test helper; contains no tests).

Pure functions; each returns a list of human-readable error strings, empty when the input
conforms. ``dialect`` is ``"2.0.1"`` (CRD 2.0.1-compatible output, the default mode) or
``"2.2"`` (``extension."davinci-crd.requestedVersion" = "2.2"``), see
shared/spec/clinical-data-contract.md §10.

Sources (read from the published standards, not from memory):

* CDS Hooks 2.0.1 (cds-hooks.hl7.org/2.0): Card, Source, Suggestion, Action, Link and the
  response object (``cards`` REQUIRED, ``systemActions`` OPTIONAL).
* Da Vinci CRD 2.0.1 (hl7.org/fhir/us/davinci-crd/STU2):
  StructureDefinition ``ext-coverage-information`` version 2.0.1. Its sub-extensions and
  bindings are those of ``input/fsh/extensions/CoverageInformation.fsh`` and
  ``input/fsh/valuesets/CoverageInformationValuesets.fsh`` in github.com/HL7/davinci-crd at
  the STU2 state (commit b47a06b7), and its constraints are exactly the five published on
  StructureDefinition-ext-coverage-information-definitions.html of STU2:
  **crd-ci-q1 .. crd-ci-q5**. CRD 2.0.1 has no crd-ci-q6 .. q9: q6 and q7 were added in
  CRD 2.1.0, q8 (and the invariant the project calls q9) in CRD 2.2.
* Da Vinci CRD 2.2: the CRD 2.2 ``CoverageInformation.fsh`` (crd-ci-q1 .. q8, ``expiry-date``,
  ``detail.category``, no ``response``) and value sets with ``indeterminate``; card type
  (``source.topic``) system ``http://terminology.hl7.org/CodeSystem/cdshooks-card-type``.
  crd-ci-q9 ("indeterminate needs a reason") could not be read from a published 2.2.x
  StructureDefinition; it is implemented as other CRD 2.2.1 validators state it, and
  marked as such below.
* The project contract, §10.2 "In 2.0.1 mode" and §10.4 (cards).

Where the FHIRPath expression of an invariant and its human description disagree, both are
checked and the message says which one failed (see crd-ci-q2 in 2.0.1, crd-ci-q3 and
crd-ci-q4 in 2.2).
"""

from __future__ import annotations

import datetime
import re
from collections import Counter
from typing import Any, Callable

__all__ = [
    "EXT_URL",
    "DIALECTS",
    "coverage_information_errors",
    "system_action_errors",
    "card_errors",
    "response_errors",
]

EXT_URL = "http://hl7.org/fhir/us/davinci-crd/StructureDefinition/ext-coverage-information"
CRD_TEMP = "http://hl7.org/fhir/us/davinci-crd/CodeSystem/temp"
DIALECTS = ("2.0.1", "2.2")

#: contract §10.4: source.topic system per dialect (code ``coverage-info`` in both)
CARD_TYPE_SYSTEM = {
    "2.0.1": CRD_TEMP,
    "2.2": "http://terminology.hl7.org/CodeSystem/cdshooks-card-type",
}

# --------------------------------------------------------------------------------------
# Sub-extension slices: url -> (min, max or None for *, allowed value[x] keys or COMPLEX)
# --------------------------------------------------------------------------------------
COMPLEX = "complex"

_SLICES_201: dict[str, tuple[int, int | None, Any]] = {
    "coverage": (1, 1, ("valueReference",)),
    "covered": (1, 1, ("valueCode",)),
    "pa-needed": (0, 1, ("valueCode",)),
    "doc-needed": (0, 1, ("valueCode",)),
    "doc-purpose": (0, None, ("valueCode",)),
    "info-needed": (0, None, ("valueCode",)),
    "billingCode": (0, None, ("valueCoding",)),
    "reason": (0, None, ("valueCodeableConcept",)),
    "detail": (0, None, COMPLEX),
    "dependency": (0, None, ("valueReference",)),
    "questionnaire": (0, None, ("valueCanonical",)),
    "response": (0, None, ("valueReference",)),
    "date": (1, 1, ("valueDate",)),
    "coverage-assertion-id": (1, 1, ("valueString",)),
    "satisfied-pa-id": (0, 1, ("valueString",)),
    "contact": (0, None, ("valueContactPoint",)),
}

_SLICES_22: dict[str, tuple[int, int | None, Any]] = {
    k: v for k, v in _SLICES_201.items() if k != "response"  # 'response' dropped after 2.0.x
}
_SLICES_22["doc-needed"] = (0, None, ("valueCode",))  # 0..1 -> 0..*
_SLICES_22["expiry-date"] = (0, 1, ("valueDate",))

SLICES = {"2.0.1": _SLICES_201, "2.2": _SLICES_22}

# detail's own sub-extensions: url -> (min, max, allowed value[x] keys)
_DETAIL_201 = {
    "code": (1, 1, ("valueCodeableConcept",)),
    "value": (1, 1, ("valueBoolean", "valueString", "valueQuantity", "valuePeriod")),
    "qualification": (0, 1, ("valueString",)),
}
_DETAIL_22 = {
    "category": (1, 1, ("valueCode",)),
    "code": (1, 1, ("valueCodeableConcept",)),
    "value": (1, 1, ("valueBoolean", "valueString", "valueUrl", "valueQuantity", "valuePeriod")),
    "qualification": (0, 1, ("valueString",)),
}
DETAIL_SLICES = {"2.0.1": _DETAIL_201, "2.2": _DETAIL_22}

# --------------------------------------------------------------------------------------
# Required value sets (valueCode bindings) per dialect
# --------------------------------------------------------------------------------------
REQUIRED_CODES: dict[str, dict[str, frozenset[str]]] = {
    # CRD 2.0.1 (CodeSystem http://hl7.org/fhir/us/davinci-crd/CodeSystem/temp + NullFlavor OTH)
    "2.0.1": {
        "covered": frozenset({"covered", "not-covered", "conditional"}),  # coverageInfo
        "pa-needed": frozenset({"no-auth", "auth-needed", "satisfied", "performpa", "conditional"}),
        # AdditionalDocumentation; the element's short text also says 'no-doc', which is not
        # in the value set (crd-ci-q1 tests for it all the same)
        "doc-needed": frozenset({"clinical", "admin", "both", "conditional"}),
        # DocReason = descendants of temp#_docReason + v3-NullFlavor#OTH
        "doc-purpose": frozenset({"withpa", "withclaim", "withorder", "retain-doc", "OTH"}),
        "info-needed": frozenset({"performer", "location", "timeframe", "OTH"}),  # informationNeeded
    },
    # CRD 2.2 (CodeSystem .../coverage-information-codes + NullFlavor OTH)
    "2.2": {
        "covered": frozenset({"covered", "not-covered", "conditional", "indeterminate"}),
        "pa-needed": frozenset(
            {"no-auth", "auth-needed", "satisfied", "performpa", "conditional", "indeterminate"}
        ),
        "doc-needed": frozenset({"clinical", "admin", "patient", "conditional", "indeterminate"}),
        "doc-purpose": frozenset({"withpa", "withclaim", "withorder", "retain-doc", "OTH"}),
        "info-needed": frozenset(
            {"performer", "location", "timeframe", "contract-window", "detail-code", "OTH"}
        ),
    },
}
DETAIL_CATEGORY_CODES = frozenset({"cat-limitation", "cat-decisional", "cat-other"})  # 2.2

#: coverageAssertionReasons (extensible binding of 'reason'; used by crd-ci-q7)
ASSERTION_REASONS = {
    "2.0.1": frozenset({"gold-card", "detail-code"}),
    "2.2": frozenset(
        {"gold-card", "no-member-found", "no-active-coverage", "coverage-not-found",
         "auth-out-network", "technical"}
    ),
}

# --------------------------------------------------------------------------------------
# FHIR primitive / datatype checks
# --------------------------------------------------------------------------------------
_CODE_RE = re.compile(r"[^\s]+( [^\s]+)*")
_ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_URI_NO_WS_RE = re.compile(r"\S+")
_ABS_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S+")
_DATE_RE = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?"
)
_DATETIME_RE = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])"
    r"(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?"
)
_UUID_RE = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
_COVERAGE_REF_RE = re.compile(r"(.*/)?Coverage/[A-Za-z0-9\-.]{1,64}(/_history/[A-Za-z0-9\-.]{1,64})?")
_TYPE_ID_REF_RE = re.compile(r"[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}")


def _is_str(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _chk_string(v: Any) -> list[str]:
    return [] if _is_str(v) else [f"must be a non-empty string, got {v!r}"]


def _chk_code(v: Any) -> list[str]:
    if isinstance(v, str) and _CODE_RE.fullmatch(v):
        return []
    return [f"must be a FHIR code (non-empty, no leading/trailing or double whitespace), got {v!r}"]


def _chk_boolean(v: Any) -> list[str]:
    return [] if isinstance(v, bool) else [f"must be a JSON boolean, got {v!r}"]


def _chk_canonical(v: Any) -> list[str]:
    if isinstance(v, str) and _URI_NO_WS_RE.fullmatch(v):
        return []
    return [f"must be a canonical URL (string without whitespace), got {v!r}"]


def _chk_url(v: Any) -> list[str]:
    if isinstance(v, str) and _ABS_URL_RE.fullmatch(v):
        return []
    return [f"must be an absolute URL, got {v!r}"]


def _chk_date(v: Any) -> list[str]:
    if not isinstance(v, str) or not _DATE_RE.fullmatch(v):
        return [f"must be a FHIR date (YYYY, YYYY-MM or YYYY-MM-DD), got {v!r}"]
    if len(v) == 10:
        try:
            datetime.date.fromisoformat(v)
        except ValueError:
            return [f"{v!r} is not a calendar date"]
    return []


def _chk_datetime(v: Any) -> list[str]:
    if isinstance(v, str) and _DATETIME_RE.fullmatch(v):
        return []
    return [f"must be a FHIR dateTime, got {v!r}"]


def _chk_reference(v: Any) -> list[str]:
    if not isinstance(v, dict):
        return [f"must be a Reference (JSON object), got {v!r}"]
    errs = []
    if not any(k in v for k in ("reference", "identifier", "display")):
        errs.append("Reference needs reference, identifier or display")
    for k in ("reference", "type", "display"):
        if k in v and not _is_str(v[k]):
            errs.append(f"Reference.{k} must be a non-empty string, got {v[k]!r}")
    if "identifier" in v and not isinstance(v["identifier"], dict):
        errs.append("Reference.identifier must be an Identifier object")
    return errs


def _chk_coding(v: Any) -> list[str]:
    if not isinstance(v, dict):
        return [f"must be a Coding (JSON object), got {v!r}"]
    errs = []
    if not any(k in v for k in ("system", "code", "display")):
        errs.append("Coding needs at least a system, code or display")
    if "system" in v and not (isinstance(v["system"], str) and _URI_NO_WS_RE.fullmatch(v["system"])):
        errs.append(f"Coding.system must be a uri, got {v['system']!r}")
    if "code" in v:
        errs += [f"Coding.code {e}" for e in _chk_code(v["code"])]
    for k in ("version", "display"):
        if k in v and not _is_str(v[k]):
            errs.append(f"Coding.{k} must be a non-empty string, got {v[k]!r}")
    if "userSelected" in v and not isinstance(v["userSelected"], bool):
        errs.append("Coding.userSelected must be a boolean")
    return errs


def _chk_codeable_concept(v: Any) -> list[str]:
    if not isinstance(v, dict):
        return [f"must be a CodeableConcept (JSON object), got {v!r}"]
    errs = []
    if "coding" not in v and "text" not in v:
        errs.append("CodeableConcept needs coding or text")
    if "coding" in v:
        if not isinstance(v["coding"], list) or not v["coding"]:
            errs.append("CodeableConcept.coding must be a non-empty array")
        else:
            for i, c in enumerate(v["coding"]):
                errs += [f"coding[{i}]: {e}" for e in _chk_coding(c)]
    if "text" in v and not _is_str(v["text"]):
        errs.append(f"CodeableConcept.text must be a non-empty string, got {v['text']!r}")
    return errs


def _chk_quantity(v: Any) -> list[str]:  # SimpleQuantity
    if not isinstance(v, dict):
        return [f"must be a Quantity (JSON object), got {v!r}"]
    errs = []
    if "value" in v and (isinstance(v["value"], bool) or not isinstance(v["value"], (int, float))):
        errs.append(f"Quantity.value must be a number, got {v['value']!r}")
    if "comparator" in v:
        errs.append("SimpleQuantity must not have a comparator")
    for k in ("unit", "system", "code"):
        if k in v and not _is_str(v[k]):
            errs.append(f"Quantity.{k} must be a non-empty string")
    if not v:
        errs.append("Quantity is empty")
    return errs


def _chk_period(v: Any) -> list[str]:
    if not isinstance(v, dict) or not v:
        return [f"must be a non-empty Period (JSON object), got {v!r}"]
    errs = []
    for k in ("start", "end"):
        if k in v:
            errs += [f"Period.{k} {e}" for e in _chk_datetime(v[k])]
    return errs


def _chk_contact_point(v: Any) -> list[str]:
    if not isinstance(v, dict) or not v:
        return [f"must be a non-empty ContactPoint (JSON object), got {v!r}"]
    errs = []
    if "system" in v and v["system"] not in ("phone", "fax", "email", "pager", "url", "sms", "other"):
        errs.append(f"ContactPoint.system {v['system']!r} is not phone|fax|email|pager|url|sms|other")
    if "value" in v and not _is_str(v["value"]):
        errs.append("ContactPoint.value must be a non-empty string")
    return errs


_VALUE_CHECKS: dict[str, Callable[[Any], list[str]]] = {
    "valueReference": _chk_reference,
    "valueCode": _chk_code,
    "valueCoding": _chk_coding,
    "valueCodeableConcept": _chk_codeable_concept,
    "valueDate": _chk_date,
    "valueString": _chk_string,
    "valueCanonical": _chk_canonical,
    "valueContactPoint": _chk_contact_point,
    "valueBoolean": _chk_boolean,
    "valueUrl": _chk_url,
    "valueQuantity": _chk_quantity,
    "valuePeriod": _chk_period,
}


def _value_keys(ext: dict) -> list[str]:
    return [k for k in ext if k.startswith("value") and k[5:6].isupper()]


def _check_dialect(dialect: str) -> None:
    if dialect not in DIALECTS:
        raise ValueError(f"dialect must be one of {DIALECTS}, got {dialect!r}")


def _check_slices(subs: list, slices: dict, where: str, dialect: str) -> tuple[list[str], dict[str, list[dict]]]:
    """Cardinality, ext-1 and value[x] type of a list of sub-extensions against ``slices``.

    Returns the errors and the sub-extensions grouped by url (well-formed ones only).
    """
    errs: list[str] = []
    by_url: dict[str, list[dict]] = {}
    for i, sub in enumerate(subs):
        if not isinstance(sub, dict):
            errs.append(f"{where}.extension[{i}] must be a JSON object")
            continue
        url = sub.get("url")
        if not _is_str(url):
            errs.append(f"{where}.extension[{i}] has no url")
            continue
        by_url.setdefault(url, []).append(sub)
    for url in by_url:
        if url not in slices:
            errs.append(
                f"{where}.extension[{url}]: sub-extension {url!r} is not defined by "
                f"ext-coverage-information in CRD {dialect}"
            )
    for url, (lo, hi, allowed) in slices.items():
        found = by_url.get(url, [])
        if len(found) < lo:
            errs.append(f"{where}.extension[{url}]: required ({lo}..{'*' if hi is None else hi}), missing")
        if hi is not None and len(found) > hi:
            errs.append(f"{where}.extension[{url}]: at most {hi} allowed, found {len(found)}")
        for sub in found:
            vkeys = _value_keys(sub)
            nested = sub.get("extension")
            if allowed == COMPLEX:
                if vkeys:
                    errs.append(f"{where}.extension[{url}]: complex sub-extension must not have {vkeys[0]}")
                continue
            # ext-1: Must have either extensions or value[x], not both
            if nested is not None:
                errs.append(f"{where}.extension[{url}]: ext-1: simple sub-extension must not have nested extensions")
            if len(vkeys) != 1:
                errs.append(
                    f"{where}.extension[{url}]: must have exactly one value[x] "
                    f"({' | '.join(allowed)}), found {vkeys or 'none'}"
                )
                continue
            vkey = vkeys[0]
            if vkey not in allowed:
                errs.append(f"{where}.extension[{url}]: value type must be {' | '.join(allowed)}, found {vkey}")
                continue
            errs += [f"{where}.extension[{url}].{vkey} {e}" for e in _VALUE_CHECKS[vkey](sub[vkey])]
    return errs, by_url


def _codes(by_url: dict[str, list[dict]], url: str) -> list[str]:
    return [s["valueCode"] for s in by_url.get(url, []) if isinstance(s.get("valueCode"), str)]


def _reason_texts(by_url: dict[str, list[dict]]) -> list[str]:
    out = []
    for s in by_url.get("reason", []):
        cc = s.get("valueCodeableConcept")
        if isinstance(cc, dict) and _is_str(cc.get("text")):
            out.append(cc["text"])
    return out


# --------------------------------------------------------------------------------------
# coverage-information
# --------------------------------------------------------------------------------------
def coverage_information_errors(ext: dict, dialect: str) -> list[str]:
    """Errors of one ``ext-coverage-information`` extension (the object with ``url`` and
    ``extension``, not the resource carrying it) in the given dialect."""
    _check_dialect(dialect)
    if not isinstance(ext, dict):
        return [f"coverage-information must be a JSON object, got {type(ext).__name__}"]
    errs: list[str] = []
    if ext.get("url") != EXT_URL:
        errs.append(f"coverage-information: url must be {EXT_URL}, got {ext.get('url')!r}")
    vkeys = _value_keys(ext)
    if vkeys:  # ext-1
        errs.append(f"coverage-information: ext-1: a complex extension must not have {vkeys[0]}")
    subs = ext.get("extension")
    if not isinstance(subs, list) or not subs:
        errs.append("coverage-information: 'extension' must be a non-empty array of sub-extensions")
        return errs

    slice_errs, by_url = _check_slices(subs, SLICES[dialect], "coverage-information", dialect)
    errs += slice_errs

    # required bindings
    for url, allowed in REQUIRED_CODES[dialect].items():
        for code in _codes(by_url, url):
            if code not in allowed:
                errs.append(
                    f"coverage-information.extension[{url}]: code {code!r} is not in the required "
                    f"CRD {dialect} value set ({', '.join(sorted(allowed))})"
                )

    # coverage must point at a Coverage
    for s in by_url.get("coverage", []):
        ref = s.get("valueReference")
        if isinstance(ref, dict):
            r = ref.get("reference")
            if isinstance(r, str):
                if not (_COVERAGE_REF_RE.fullmatch(r) or r.startswith("#")):
                    errs.append(f"coverage-information.extension[coverage]: must reference a Coverage, got {r!r}")
            elif ref.get("type") not in (None, "Coverage"):
                errs.append(f"coverage-information.extension[coverage]: must reference a Coverage, got type {ref.get('type')!r}")

    errs += _detail_errors(by_url, dialect)

    if dialect == "2.0.1":
        errs += _invariants_201(by_url)
        errs += _contract_201(by_url)
    else:
        errs += _invariants_22(by_url)
    return errs


def _detail_errors(by_url: dict[str, list[dict]], dialect: str) -> list[str]:
    errs: list[str] = []
    for n, d in enumerate(by_url.get("detail", [])):
        where = f"coverage-information.extension[detail#{n}]"
        nested = d.get("extension")
        if not isinstance(nested, list) or not nested:
            errs.append(f"{where}: must have nested code/value sub-extensions")
            continue
        e, sub_by_url = _check_slices(nested, DETAIL_SLICES[dialect], where, dialect)
        errs += [x.replace("by ext-coverage-information", "by ext-coverage-information.detail") for x in e]
        if dialect == "2.2":
            for code in _codes(sub_by_url, "category"):
                if code not in DETAIL_CATEGORY_CODES:
                    errs.append(f"{where}.extension[category]: code {code!r} is not in coverageDetailCategories")
    return errs


def _invariants_201(by_url: dict[str, list[dict]]) -> list[str]:
    """CRD 2.0.1 (STU2) constraints on ext-coverage-information, verbatim."""
    errs: list[str] = []
    covered = _codes(by_url, "covered")
    pa = _codes(by_url, "pa-needed")
    doc = _codes(by_url, "doc-needed")
    purpose = _codes(by_url, "doc-purpose")

    # crd-ci-q1: "Questionnaire and QuestionnaireResponse are only allowed when doc-needed
    #   exists and not equal to 'no-doc'"
    #   extension.where(url='questionnaire' or url='response').exists() implies
    #   (extension.where(url = 'doc-needed').exists() and
    #    extension.where(url = 'doc-needed').all(value != 'no-doc'))
    if by_url.get("questionnaire") or by_url.get("response"):
        if not by_url.get("doc-needed") or "no-doc" in doc:
            errs.append(
                "crd-ci-q1: Questionnaire and QuestionnaireResponse are only allowed when doc-needed "
                f"exists and not equal to 'no-doc' (doc-needed: {doc or 'absent'})"
            )

    # crd-ci-q2: "If covered is set to 'not-covered', then 'pa-needed' should not exist."
    #   extension.where(url = 'covered' and value != 'not-covered') implies
    #   extension.where(url = 'pa-needed').exists()
    # The published FHIRPath does not say what the description says: it requires pa-needed
    # whenever covered is anything but 'not-covered' (a FHIR validator enforces exactly
    # that). Both halves are checked.
    if any(c != "not-covered" for c in covered) and not by_url.get("pa-needed"):
        errs.append(
            "crd-ci-q2 (FHIRPath): extension.where(url = 'covered' and value != 'not-covered') implies "
            f"extension.where(url = 'pa-needed').exists() -- covered is {covered[0]!r} but pa-needed is absent"
        )
    if "not-covered" in covered and by_url.get("pa-needed"):
        errs.append("crd-ci-q2: If covered is set to 'not-covered', then 'pa-needed' should not exist.")

    # crd-ci-q3: "If 'info-needed' exists, then at least one of 'covered', 'pa-needed', or
    #   'doc-needed' must be 'conditional'."
    #   extension.where(url = 'info-needed').exists() implies extension.where((url = 'covered'
    #   or url = 'pa-needed' or url = 'doc-needed') and value = 'conditional').count() >= 1
    if by_url.get("info-needed") and "conditional" not in covered + pa + doc:
        errs.append(
            "crd-ci-q3: If 'info-needed' exists, then at least one of 'covered', 'pa-needed', or "
            "'doc-needed' must be 'conditional'."
        )

    # crd-ci-q4: "If 'pa-needed' is 'satisfied', then 'Doc-purpose' can't be 'PA'."
    #   extension.where(url = 'pa-needed' and value = 'satisfied') and
    #   extension.where(url = 'doc-purpose').exists() implies
    #   extension.where(url = 'doc-purpose').all(value != 'PA')
    # 'PA' is not a DocReason code; the code meant is 'withpa' (CRD 2.1 corrected the text).
    # Both are rejected.
    if "satisfied" in pa:
        bad = [p for p in purpose if p in ("PA", "withpa")]
        if bad:
            errs.append(
                f"crd-ci-q4: If 'pa-needed' is 'satisfied', then 'Doc-purpose' can't be 'PA' (found {bad[0]!r})"
            )

    # crd-ci-q5: "'satisfied-pa-id' must exist if and only if 'pa-needed' is set to 'satisfied'."
    #   extension.where(url = 'pa-needed' and value = 'satisfied').exists() =
    #   extension.where(url = 'satisfied-pa-id').exists()
    if ("satisfied" in pa) != bool(by_url.get("satisfied-pa-id")):
        errs.append(
            "crd-ci-q5: 'satisfied-pa-id' must exist if and only if 'pa-needed' is set to 'satisfied'."
        )
    return errs


def _contract_201(by_url: dict[str, list[dict]]) -> list[str]:
    """Contract §10.2, 'In 2.0.1 mode'."""
    errs: list[str] = []
    covered = _codes(by_url, "covered")
    pa = _codes(by_url, "pa-needed")
    doc = _codes(by_url, "doc-needed")
    info = _codes(by_url, "info-needed")
    purpose = _codes(by_url, "doc-purpose")
    pre = "contract §10.2 (2.0.1 mode)"
    # never indeterminate, patient, both, info-needed detail-code, response, contact,
    # or url-valued detail
    for url in ("covered", "pa-needed", "doc-needed", "doc-purpose", "info-needed"):
        if "indeterminate" in _codes(by_url, url):
            errs.append(f"{pre}: never 'indeterminate' ({url})")
    for code in ("patient", "both"):
        if code in doc:
            errs.append(f"{pre}: never doc-needed {code!r}")
    if "detail-code" in info:
        errs.append(f"{pre}: never info-needed 'detail-code'")
    for url in ("response", "contact"):
        if by_url.get(url):
            errs.append(f"{pre}: never a {url!r} sub-extension")
    for d in by_url.get("detail", []):
        for sub in d.get("extension", []) if isinstance(d.get("extension"), list) else []:
            if isinstance(sub, dict) and sub.get("url") == "value" and ("valueUrl" in sub or "valueUri" in sub):
                errs.append(f"{pre}: never a url-valued detail")
    # info-needed exactly when a value (covered, pa-needed or doc-needed) is conditional
    has_conditional = "conditional" in covered + pa + doc
    if has_conditional and not info:
        errs.append(f"{pre}: info-needed is required when a value is 'conditional'")
    if info and not has_conditional:
        errs.append(f"{pre}: info-needed only when a value is 'conditional'")
    # OTH always with reason.text
    if ("OTH" in info or "OTH" in purpose) and not _reason_texts(by_url):
        errs.append(f"{pre}: 'OTH' always with reason.text")
    return errs


def _invariants_22(by_url: dict[str, list[dict]]) -> list[str]:
    """CRD 2.2 constraints on ext-coverage-information."""
    errs: list[str] = []
    covered = _codes(by_url, "covered")
    pa = _codes(by_url, "pa-needed")
    doc = _codes(by_url, "doc-needed")
    info = _codes(by_url, "info-needed")
    purpose = _codes(by_url, "doc-purpose")
    has_reason = bool(by_url.get("reason"))

    # crd-ci-q1: "Questionnaire is only allowed when doc-needed exists"
    #   extension.where(url='questionnaire').exists() implies extension.where(url = 'doc-needed').exists()
    if by_url.get("questionnaire") and not by_url.get("doc-needed"):
        errs.append("crd-ci-q1: Questionnaire is only allowed when doc-needed exists")

    # crd-ci-q2: "If covered is set to 'not-covered', then 'pa-needed' must not exist."
    #   extension.where(url = 'covered' and value = 'not-covered').exists() implies
    #   extension.where(url = 'pa-needed').exists().not()
    if "not-covered" in covered and by_url.get("pa-needed"):
        errs.append("crd-ci-q2: If covered is set to 'not-covered', then 'pa-needed' must not exist.")

    # crd-ci-q3: "'info-needed' SHALL exist if and only if at least one of 'covered',
    #   'pa-needed', or 'doc-needed' is set to 'conditional'."
    #   extension.where((url = 'covered' or url = 'pa-needed' or url = 'doc-needed') and
    #   value = 'conditional').count() >= 1 implies extension.where(url = 'info-needed').exists()
    # The FHIRPath checks one direction; the description says "if and only if": both checked.
    has_conditional = "conditional" in covered + pa + doc
    if has_conditional and not info:
        errs.append(
            "crd-ci-q3: 'info-needed' SHALL exist if and only if at least one of 'covered', "
            "'pa-needed', or 'doc-needed' is set to 'conditional' (a value is conditional, info-needed absent)"
        )
    if info and not has_conditional:
        errs.append(
            "crd-ci-q3 (description, 'only if'): 'info-needed' SHALL exist if and only if at least one of "
            "'covered', 'pa-needed', or 'doc-needed' is set to 'conditional' (info-needed present, nothing conditional)"
        )

    # crd-ci-q4: "If 'pa-needed' is 'satisfied', 'noauth', or 'not-covered', then 'Doc-purpose'
    #   cannot be 'withpa'."
    #   extension.where(url = 'pa-needed' and (value = 'satisfied' or value = 'noauth' or
    #   value = 'not-covered')) and extension.where(url = 'doc-purpose').exists() implies
    #   extension.where(url = 'doc-purpose').all(value != 'withpa')
    # 'noauth' is read as the pa-needed code 'no-auth', and 'not-covered' (not a pa-needed
    # code) as covered = 'not-covered'; the literal values are checked as well.
    if (any(p in ("satisfied", "no-auth", "noauth", "not-covered") for p in pa) or "not-covered" in covered) \
            and "withpa" in purpose:
        errs.append(
            "crd-ci-q4: If 'pa-needed' is 'satisfied', 'noauth', or 'not-covered', then 'Doc-purpose' "
            "cannot be 'withpa'."
        )

    # crd-ci-q5: "'satisfied-pa-id' must exist if and only if 'pa-needed' is set to 'satisfied'."
    #   extension.where(url = 'pa-needed' and value = 'satisfied').exists() =
    #   extension.where(url = 'satisfied-pa-id').exists()
    if ("satisfied" in pa) != bool(by_url.get("satisfied-pa-id")):
        errs.append("crd-ci-q5: 'satisfied-pa-id' must exist if and only if 'pa-needed' is set to 'satisfied'.")

    # crd-ci-q6: "If 'info-needed' is OTH, then reason must be specified"
    #   extension.where(url = 'info-needed' and value = 'OTH').exists() implies
    #   extension.where(url = 'reason').exists()
    if "OTH" in info and not has_reason:
        errs.append("crd-ci-q6: If 'info-needed' is OTH, then reason must be specified")

    # crd-ci-q7: "If reason.coding is present and is not from the extensible value set, then
    #   reason.text must be present"
    #   extension.where(url = 'reason').empty() or extension.where(url = 'reason').value.text.exists()
    #   or extension.where(url = 'reason').value.memberOf('http://hl7.org/fhir/us/davinci-crd/ValueSet/coverageAssertionReasons')
    # Checked per reason.
    for s in by_url.get("reason", []):
        cc = s.get("valueCodeableConcept")
        if not isinstance(cc, dict) or _is_str(cc.get("text")):
            continue
        codings = cc.get("coding") if isinstance(cc.get("coding"), list) else []
        in_vs = any(
            isinstance(c, dict) and c.get("system") == CRD_TEMP and c.get("code") in ASSERTION_REASONS["2.2"]
            for c in codings
        )
        if not in_vs:
            errs.append(
                "crd-ci-q7: If reason.coding is present and is not from the extensible value set, "
                "then reason.text must be present"
            )

    # crd-ci-q8: "If doc-purpose is present with a value other than 'conditional', then reason
    #   must be present"
    #   extension.where(url = 'doc-purpose' and value != 'conditional').exists() implies
    #   extension.where(url = 'reason').exists()
    if any(p != "conditional" for p in purpose) and not has_reason:
        errs.append(
            "crd-ci-q8: If doc-purpose is present with a value other than 'conditional', then reason must be present"
        )

    # crd-ci-q9 (NOT read from a published StructureDefinition; as stated by CRD 2.2.1
    #   validators): an 'indeterminate' covered, pa-needed or doc-needed needs a reason.
    if "indeterminate" in covered + pa + doc and not has_reason:
        errs.append(
            "crd-ci-q9: If covered, pa-needed or doc-needed is 'indeterminate', then reason must be present"
        )
    return errs


# --------------------------------------------------------------------------------------
# systemAction
# --------------------------------------------------------------------------------------
def _coverage_key(ext: dict) -> str | None:
    for s in ext.get("extension", []) if isinstance(ext.get("extension"), list) else []:
        if isinstance(s, dict) and s.get("url") == "coverage" and isinstance(s.get("valueReference"), dict):
            ref = s["valueReference"]
            return ref.get("reference") or repr(ref.get("identifier"))
    return None


def _assertion_id(ext: dict) -> str | None:
    for s in ext.get("extension", []) if isinstance(ext.get("extension"), list) else []:
        if isinstance(s, dict) and s.get("url") == "coverage-assertion-id":
            return s.get("valueString")
    return None


def system_action_errors(action: dict, dialect: str) -> list[str]:
    """Errors of one coverage-information systemAction (CDS Hooks Action + contract §10.2)."""
    _check_dialect(dialect)
    if not isinstance(action, dict):
        return [f"systemAction must be a JSON object, got {type(action).__name__}"]
    errs: list[str] = []
    if action.get("type") != "update":
        errs.append(f"systemAction: type must be 'update', got {action.get('type')!r}")
    if not _is_str(action.get("description")):
        errs.append("systemAction: description is required (non-empty string)")
    res = action.get("resource")
    if not isinstance(res, dict):
        errs.append("systemAction: resource is required (a FHIR resource object)")
        return errs
    rt = res.get("resourceType")
    if not (isinstance(rt, str) and re.fullmatch(r"[A-Z][A-Za-z]+", rt)):
        errs.append(f"systemAction: resource.resourceType is required, got {rt!r}")
    rid = res.get("id")
    if not (isinstance(rid, str) and _ID_RE.fullmatch(rid)):
        errs.append(f"systemAction: resource.id is required (FHIR id), got {rid!r}")
    exts = res.get("extension")
    if exts is not None and not isinstance(exts, list):
        errs.append("systemAction: resource.extension must be an array")
        exts = []
    ci = [(i, e) for i, e in enumerate(exts or []) if isinstance(e, dict) and e.get("url") == EXT_URL]
    if not ci:
        errs.append("systemAction: resource carries no ext-coverage-information extension")
    per_coverage = Counter(_coverage_key(e) for _, e in ci)
    for cov, n in per_coverage.items():
        if cov is not None and n > 1:
            errs.append(
                f"systemAction: {n} ext-coverage-information extensions for {cov}; exactly one per Coverage"
            )
    ids = Counter(a for a in (_assertion_id(e) for _, e in ci) if a is not None)
    for aid, n in ids.items():
        if n > 1:
            errs.append(f"systemAction: coverage-assertion-id {aid!r} is used {n} times; it must be unique")
    for i, e in ci:
        errs += [f"systemAction.resource.extension[{i}]: {x}" for x in coverage_information_errors(e, dialect)]
    return errs


# --------------------------------------------------------------------------------------
# cards
# --------------------------------------------------------------------------------------
def _action_errors(a: Any, where: str) -> list[str]:
    if not isinstance(a, dict):
        return [f"{where} must be a JSON object"]
    errs = []
    t = a.get("type")
    if t not in ("create", "update", "delete"):
        errs.append(f"{where}.type must be create|update|delete, got {t!r}")
    if not _is_str(a.get("description")):
        errs.append(f"{where}.description is required")
    if t in ("create", "update"):
        r = a.get("resource")
        if not isinstance(r, dict) or not _is_str(r.get("resourceType")):
            errs.append(f"{where}.resource is required for {t} (a FHIR resource with resourceType)")
    if t == "delete" and not a.get("resourceId"):
        errs.append(f"{where}.resourceId is required for delete")
    return errs


def card_errors(card: dict, dialect: str, *, topic_code: str = "coverage-info") -> list[str]:
    """Errors of one card: CDS Hooks 2.0.1 Card rules plus contract §10.4.

    ``topic_code`` is the CRD card type expected in ``source.topic`` (the contract's cards are
    all ``coverage-info``)."""
    _check_dialect(dialect)
    if not isinstance(card, dict):
        return [f"card must be a JSON object, got {type(card).__name__}"]
    errs: list[str] = []
    uuid = card.get("uuid")
    if not (isinstance(uuid, str) and _UUID_RE.fullmatch(uuid)):
        errs.append(f"card: uuid is required (a UUID), got {uuid!r}")
    summary = card.get("summary")
    if not _is_str(summary):
        errs.append("card: summary is required (non-empty string)")
    elif len(summary) >= 140:
        errs.append(f"card: summary must be shorter than 140 characters, has {len(summary)}")
    if "detail" in card and not isinstance(card["detail"], str):
        errs.append("card: detail must be a string (markdown)")
    if card.get("indicator") not in ("info", "warning", "critical"):
        errs.append(f"card: indicator must be info|warning|critical, got {card.get('indicator')!r}")

    src = card.get("source")
    if not isinstance(src, dict):
        errs.append("card: source is required (object)")
    else:
        if not _is_str(src.get("label")):
            errs.append("card.source: label is required (non-empty string)")
        for k in ("url", "icon"):
            if k in src and not (isinstance(src[k], str) and _ABS_URL_RE.fullmatch(src[k])):
                errs.append(f"card.source: {k} must be an absolute URL, got {src[k]!r}")
        topic = src.get("topic")
        want = CARD_TYPE_SYSTEM[dialect]
        if not isinstance(topic, dict):
            errs.append(f"card.source: topic is required (Coding {want}#{topic_code})")
        else:
            errs += [f"card.source.topic: {e}" for e in _chk_coding(topic)]
            if topic.get("system") != want:
                errs.append(f"card.source.topic: system must be {want} in CRD {dialect} mode, got {topic.get('system')!r}")
            if topic.get("code") != topic_code:
                errs.append(f"card.source.topic: code must be {topic_code!r}, got {topic.get('code')!r}")

    sugg = card.get("suggestions")
    if sugg is not None:
        if not isinstance(sugg, list):
            errs.append("card: suggestions must be an array")
        else:
            for i, s in enumerate(sugg):
                w = f"card.suggestions[{i}]"
                if not isinstance(s, dict):
                    errs.append(f"{w} must be a JSON object")
                    continue
                if not _is_str(s.get("label")):
                    errs.append(f"{w}: label is required")
                if not (isinstance(s.get("uuid"), str) and _UUID_RE.fullmatch(s["uuid"])):
                    errs.append(f"{w}: uuid is required (a UUID), got {s.get('uuid')!r}")
                if "isRecommended" in s and not isinstance(s["isRecommended"], bool):
                    errs.append(f"{w}: isRecommended must be a boolean")
                acts = s.get("actions")
                if acts is not None:
                    if not isinstance(acts, list):
                        errs.append(f"{w}: actions must be an array")
                    else:
                        for j, a in enumerate(acts):
                            errs += _action_errors(a, f"{w}.actions[{j}]")
            if sugg and card.get("selectionBehavior") not in ("at-most-one", "any"):
                errs.append(
                    "card: selectionBehavior must be at-most-one|any when suggestions are present, "
                    f"got {card.get('selectionBehavior')!r}"
                )

    reasons = card.get("overrideReasons")
    if reasons is not None:
        if not isinstance(reasons, list):
            errs.append("card: overrideReasons must be an array of Coding")
        else:
            for i, r in enumerate(reasons):
                if not isinstance(r, dict) or not all(_is_str(r.get(k)) for k in ("system", "code", "display")):
                    errs.append(f"card.overrideReasons[{i}]: a Coding with system, code and display is required")

    links = card.get("links")
    if links is not None:
        if not isinstance(links, list):
            errs.append("card: links must be an array")
        else:
            for i, ln in enumerate(links):
                w = f"card.links[{i}]"
                if not isinstance(ln, dict):
                    errs.append(f"{w} must be a JSON object")
                    continue
                if not _is_str(ln.get("label")):
                    errs.append(f"{w}: label is required")
                if not (isinstance(ln.get("url"), str) and _ABS_URL_RE.fullmatch(ln["url"])):
                    errs.append(f"{w}: url is required (absolute URL), got {ln.get('url')!r}")
                if ln.get("type") not in ("absolute", "smart"):
                    errs.append(f"{w}: type must be absolute|smart, got {ln.get('type')!r}")
                if "appContext" in ln:
                    if ln.get("type") != "smart":
                        errs.append(f"{w}: appContext is only allowed on smart links")
                    elif not isinstance(ln["appContext"], str):
                        errs.append(f"{w}: appContext must be a string")

    ext = card.get("extension")
    key = "davinci-crd.associated-resource"
    if not isinstance(ext, dict):
        errs.append(f"card: extension.\"{key}\" is required (contract §10.4)")
    else:
        refs = ext.get(key)
        if not isinstance(refs, list) or not refs:
            errs.append(f"card.extension: \"{key}\" must be a non-empty array of References (contract §10.4)")
        else:
            for i, r in enumerate(refs):
                if not (isinstance(r, dict) and isinstance(r.get("reference"), str)
                        and _TYPE_ID_REF_RE.fullmatch(r["reference"])):
                    errs.append(
                        f"card.extension.\"{key}\"[{i}]: must be {{\"reference\": \"Type/id\"}}, got {r!r}"
                    )
    return errs


def _associated(card: Any) -> list[str]:
    ext = card.get("extension") if isinstance(card, dict) else None
    refs = ext.get("davinci-crd.associated-resource") if isinstance(ext, dict) else None
    return [r["reference"] for r in refs or [] if isinstance(r, dict) and isinstance(r.get("reference"), str)]


# --------------------------------------------------------------------------------------
# response
# --------------------------------------------------------------------------------------
def response_errors(body: dict, dialect: str) -> list[str]:
    """Errors of a CDS Hooks 2.0.1 response body carrying CRD cards and systemActions.

    Besides each card and systemAction, checks the contract's pairing (§10.2, §10.4): each
    order with a coverage-information systemAction has exactly one card whose
    ``davinci-crd.associated-resource`` references it, and each card references an order
    that has a systemAction."""
    _check_dialect(dialect)
    if not isinstance(body, dict):
        return [f"response must be a JSON object, got {type(body).__name__}"]
    errs: list[str] = []
    cards = body.get("cards")
    if not isinstance(cards, list):
        errs.append("response: cards is required (array)")
        cards = []
    for i, c in enumerate(cards):
        errs += [f"cards[{i}]: {e}" for e in card_errors(c, dialect)]
    actions = body.get("systemActions")
    if actions is not None and not isinstance(actions, list):
        errs.append("response: systemActions must be an array")
        actions = None
    for i, a in enumerate(actions or []):
        errs += [f"systemActions[{i}]: {e}" for e in system_action_errors(a, dialect)]

    if actions:
        order_refs = []
        for a in actions:
            r = a.get("resource") if isinstance(a, dict) else None
            if isinstance(r, dict) and _is_str(r.get("resourceType")) and _is_str(r.get("id")):
                order_refs.append(f"{r['resourceType']}/{r['id']}")
        card_refs = Counter(ref for c in cards for ref in _associated(c))
        for ref in order_refs:
            if card_refs[ref] != 1:
                errs.append(
                    f"response: {ref} has a systemAction and {card_refs[ref]} cards associated with it; "
                    "the contract gives each evaluated order exactly one card"
                )
        for ref in card_refs:
            if ref not in order_refs:
                errs.append(f"response: a card is associated with {ref}, which has no coverage-information systemAction")
    return errs
