"""Label names as datasets and users spell them: what resolves to our label set and what must not."""

from __future__ import annotations

import pytest

from lib.data.label_names import SYNONYMS, canonical, normal_form, resolve
from lib.data.real_samples import LABELS as REAL_LABELS

OURS = sorted(set(REAL_LABELS.values()) | {"lesion", "adrenal_gland_left"})


@pytest.mark.parametrize("spelled, ours", [
    ("kidney_right", "kidney_right"),            # exact
    ("Kidney_Right", "kidney_right"),            # case
    ("Right Kidney", "kidney_right"),            # AMOS / a Slicer segment name: side first, spaces
    ("right-kidney", "kidney_right"),
    ("RK", "kidney_right"), ("lk", "kidney_left"),  # BTCV abbreviations
    ("Gall Bladder", "gallbladder"), ("IVC", "inferior_vena_cava"), ("postcava", "inferior_vena_cava"),
    ("portal vein and splenic vein", "portal_vein_and_splenic_vein"),
    ("Tumour", "lesion"), ("cancer", "lesion"), ("liver tumor", "lesion"),
    ("left adrenal gland", "adrenal_gland_left"),
    ("small intestine", "small_bowel"),
])
def test_other_spellings_resolve_to_our_label(spelled, ours):
    assert resolve(spelled, OURS) == ours


@pytest.mark.parametrize("spelled", ["kidney", "kid", "liv", "left", "vein", "", "bladder", "Segment_1"])
def test_nothing_fuzzier_than_a_spelling_resolves(spelled):
    assert resolve(spelled, OURS) is None


def test_the_label_set_own_spelling_is_returned():
    # a label set spelled differently from ours gets its own spelling back, whichever way the request spells it
    theirs = ["Right Kidney", "Liver", "Tumor"]
    assert resolve("kidney_right", theirs) == "Right Kidney"
    assert resolve("LIVER", theirs) == "Liver"
    assert resolve("lesion", theirs) == resolve("tumour", theirs) == "Tumor"
    # two names that mean one label: ambiguous, so neither
    assert resolve("tumour", ["lesion", "Tumor"]) is None and resolve("lesion", ["lesion", "Tumor"]) == "lesion"


def test_canonical_is_our_spelling():
    assert [canonical(n) for n in ("Right Kidney", "RK", "kidney_right", "Liver Tumour", "Stomach")] == [
        "kidney_right", "kidney_right", "kidney_right", "lesion", "stomach"]


def test_synonyms_are_in_normal_form_and_point_at_our_names():
    assert all(normal_form(k) == k and normal_form(v) == v for k, v in SYNONYMS.items())
    assert set(SYNONYMS.values()) <= set(OURS) | {"lesion"}
