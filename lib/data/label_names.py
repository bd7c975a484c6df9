"""Structure names as datasets and users spell them, mapped onto one label set.

A hospital's labels rarely use our spellings: MSD/BTCV/AMOS/KiTS say "right kidney", "gall bladder", "IVC",
"postcava", "tumour" or "cancer", a Slicer user types "Right Kidney", TotalSegmentator writes
"kidney_right". A policy trained on ``kidney_right`` must take all of them, and must not silently take a
name it was never trained on. ``resolve`` decides, in this order:

1. the exact name;
2. else the known name with the same *canonical* spelling (``canonical``), which is: the normal form
   (``normal_form``: lower case, runs of spaces / hyphens / dots / underscores -> one underscore, outer
   underscores dropped: "Right Kidney" -> "right_kidney"), a side-first name turned side-last ("right_kidney" ->
   "kidney_right", "left_adrenal_gland" -> "adrenal_gland_left": our label set's and TotalSegmentator's
   convention), and a known synonym (``SYNONYMS``: "rk", "ivc", "tumour" -> ours).

Nothing fuzzier (no edit distance, no substring match): "kidney" must not become "kidney_left", and a name that
resolves to nothing is an error the caller reports with the valid names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: other spellings of our label names, in normal form (see ``normal_form``) -> our name. Sources: the label
#: names of the public abdominal datasets (MSD tasks, BTCV, AMOS, KiTS, WORD) and common abbreviations.
SYNONYMS: dict[str, str] = {
    # kidneys (BTCV "rk"/"lk", KiTS "kidney" is both and stays unresolved)
    "rk": "kidney_right", "lk": "kidney_left", "r_kidney": "kidney_right", "l_kidney": "kidney_left",
    "kidney_r": "kidney_right", "kidney_l": "kidney_left",
    # gallbladder
    "gall_bladder": "gallbladder", "gb": "gallbladder",
    # vessels (AMOS spells the aorta "arota" and the IVC "postcava")
    "ivc": "inferior_vena_cava", "postcava": "inferior_vena_cava", "vena_cava_inferior": "inferior_vena_cava",
    "arota": "aorta",
    "portal_vein": "portal_vein_and_splenic_vein", "portal_and_splenic_vein": "portal_vein_and_splenic_vein",
    "portal_vein_and_splenic_veins": "portal_vein_and_splenic_vein",
    # bowel
    "small_intestine": "small_bowel", "large_bowel": "colon",
    "large_intestine": "colon",
    # lesions (MSD "cancer", "tumour"; KiTS "tumor"; LiTS "lesion")
    "tumor": "lesion", "tumour": "lesion", "cancer": "lesion", "lesions": "lesion", "mass": "lesion",
    "nodule": "lesion", "liver_tumor": "lesion", "liver_tumour": "lesion", "liver_lesion": "lesion",
    "kidney_tumor": "lesion", "kidney_tumour": "lesion", "pancreas_tumor": "lesion", "pancreatic_tumor": "lesion",
    "lung_nodule": "lesion", "lung_tumor": "lesion", "lung_tumour": "lesion", "brain_tumor": "lesion",
    "brain_tumour": "lesion",
}

_SIDES = ("left", "right")
_SEPARATORS = re.compile(r"[\s\-_.]+")


def normal_form(name: str) -> str:
    """Lower case, runs of spaces / hyphens / dots / underscores -> "_", no leading or trailing "_"."""
    return _SEPARATORS.sub("_", str(name).strip().lower()).strip("_")


def _side_last(normal: str) -> str:
    """"right_kidney" -> "kidney_right" (unchanged when the name does not start with a side)."""
    side, _, rest = normal.partition("_")
    return f"{rest}_{side}" if side in _SIDES and rest else normal


def canonical(name: str) -> str:
    """Our spelling of ``name``: its normal form, side last, through ``SYNONYMS`` ("Right Kidney", "RK" ->
    "kidney_right"); a name we have no other spelling for comes back in normal form."""
    normal = normal_form(name)
    for candidate in (normal, _side_last(normal)):
        if candidate in SYNONYMS:
            return SYNONYMS[candidate]
    return _side_last(normal)


def resolve(name: str, known: Iterable[str]) -> str | None:
    """The name in ``known`` that ``name`` means, or None: the exact name, else the one with the same
    ``canonical`` spelling (the module docstring). ``known`` is a label set's names, spelled as that label set
    spells them, and the match comes back in that spelling; two known names with one canonical spelling make
    the match ambiguous (None)."""
    names = list(dict.fromkeys(str(n) for n in known))
    if name in names:
        return str(name)
    target = canonical(name)
    matches = [n for n in names if canonical(n) == target]
    return matches[0] if len(matches) == 1 else None
