"""Captions of the "hierarchical" cohort family: a paraphrase bank of its own (no sentence of the "lesions" family's
bank), locations by thirds some of the time, background sentences (stroma, fat by halves) and a varied order.

Every finding is ``{"sentence", "tissue", "graded": True}``: the background is described, so it is graded for
grounding like any lesion (the demo keeps a finding when some patch lies in its tissue).
"""

from __future__ import annotations

import numpy as np

# One phrasing a line, "kind: singular | plural"; a location may follow. "stroma" and "fat" describe the
# background (no plural; fat names the half it fills in place of {where}). Lymphoid tissue is "sheet" when it
# reaches the lymphoma threshold, else "aggregate", so the text says what the rule saw.
_BANK = """
stroma: The background consists of dense collagenous stroma
stroma: Dense fibrocollagenous stroma forms the backdrop of the specimen
stroma: Hyalinised fibrous stroma runs through the whole specimen
stroma: The intervening tissue is collagen-rich stroma
stroma: Fibrous connective tissue makes up the background
stroma: The stroma is dense and collagenous throughout
fat: Mature adipose tissue makes up much of the {where}
fat: Lobules of mature fat occupy the {where}
fat: Adipose tissue fills most of the {where} of the specimen
fat: Univacuolated adipocytes take up the {where}
fat: Fatty tissue predominates in the {where}
fat: The {where} is largely adipose tissue
tumour: An invasive carcinoma nest with hyperchromatic nuclei | Invasive carcinoma nests with hyperchromatic nuclei
tumour: A cohesive cluster of malignant cells | Cohesive clusters of malignant cells
tumour: An island of infiltrating carcinoma | Islands of infiltrating carcinoma
tumour: A solid group of atypical epithelial cells | Solid groups of atypical epithelial cells
tumour: A focus of poorly differentiated carcinoma | Foci of poorly differentiated carcinoma
tumour: A crowded mass of pleomorphic tumour cells | Crowded masses of pleomorphic tumour cells
mucin: A pool of extracellular mucin | Pools of extracellular mucin
mucin: A lake of pale mucin with floating tumour cells | Lakes of pale mucin with floating tumour cells
mucin: A mucin pool dissecting the stroma | Mucin pools dissecting the stroma
mucin: An area of abundant mucinous material | Areas of abundant mucinous material
mucin: A collection of basophilic mucin | Collections of basophilic mucin
mucin: A mucinous lake | Mucinous lakes
necrosis: A zone of necrotic tissue | Zones of necrotic tissue
necrosis: A necrotic focus with karyorrhectic debris | Necrotic foci with karyorrhectic debris
necrosis: An area of geographic necrosis | Areas of geographic necrosis
necrosis: A region of cell death with nuclear fragments | Regions of cell death with nuclear fragments
necrosis: A patch of eosinophilic necrotic debris | Patches of eosinophilic necrotic debris
necrosis: An infarct-like necrotic area | Infarct-like necrotic areas
haemorrhage: A focus of fresh haemorrhage | Foci of fresh haemorrhage
haemorrhage: An area of extravasated red blood cells | Areas of extravasated red blood cells
haemorrhage: A haemorrhagic patch | Haemorrhagic patches
haemorrhage: A collection of erythrocytes | Collections of erythrocytes
haemorrhage: A pool of recent bleeding | Pools of recent bleeding
haemorrhage: A blood-filled area | Blood-filled areas
aggregate: A small lymphoid aggregate | Small lymphoid aggregates
aggregate: A little cluster of mature lymphocytes | Little clusters of mature lymphocytes
aggregate: A small lymphoid nodule | Small lymphoid nodules
aggregate: A minor collection of lymphocytes | Minor collections of lymphocytes
aggregate: A tiny focus of chronic inflammatory cells | Tiny foci of chronic inflammatory cells
aggregate: A compact aggregate of small round lymphocytes | Compact aggregates of small round lymphocytes
sheet: A sheet of monotonous lymphoid cells effacing the architecture | Sheets of monotonous lymphoid cells effacing the architecture
sheet: A diffuse sheet of atypical lymphocytes | Diffuse sheets of atypical lymphocytes
sheet: A dense monotonous lymphoid infiltrate | Dense monotonous lymphoid infiltrates
sheet: A confluent field of medium-sized lymphoid cells | Confluent fields of medium-sized lymphoid cells
sheet: A solid expanse of lymphoid cells replacing the tissue | Solid expanses of lymphoid cells replacing the tissue
sheet: A diffuse lymphoid proliferation | Diffuse lymphoid proliferations
"""  # noqa: E501  (one phrasing a line reads better than wrapped ones)
_LINES = [line.split(": ", 1) for line in _BANK.strip().splitlines()]
PHRASES = {kind: [text.split(" | ") for other, text in _LINES if other == kind] for kind, _ in _LINES}
DIAGNOSIS_SENTENCES = ("Impression: {}.", "Interpretation: {}.", "Conclusion: {}.", "Pathological diagnosis: {}.",
                       "Diagnostic category: {}.")  # fmt: skip
LOCATION_RATE = 0.6  # share of lesion sentences that say where


def _where(places: list[str]) -> str:
    """'upper left', or 'upper left and central', or 'upper, left and central'."""
    unique = list(dict.fromkeys(places))
    return unique[0] if len(unique) == 1 else ", ".join(unique[:-1]) + " and " + unique[-1]


def lesion_sentence(kind: str, places: list[str], rng: np.random.Generator) -> str:
    """A lesion finding in a seeded phrasing (plural for several lesions), often with where it lies: after it
    ("... in the lower left part of the tissue") or before it ("In the central area, ...")."""
    opening = PHRASES[kind][rng.integers(len(PHRASES[kind]))][len(places) > 1]
    if not places or rng.random() >= LOCATION_RATE:
        return f"{opening}."
    where, several = _where(places), len(set(places)) > 1
    form = int(rng.integers(3))
    if form == 0:
        return f"{opening} in the {where} {'parts' if several else 'part'} of the tissue."
    if form == 1:
        return f"{opening} in the {where} {'areas' if several else 'area'}."
    return f"In the {where} {'areas' if several else 'area'}, {opening[0].lower()}{opening[1:]}."


def background_sentence(kind: str, half: str | None, rng: np.random.Generator) -> str:
    """A background sentence: stroma (no location) or fat (the half of the tissue it fills)."""
    text = PHRASES[kind][rng.integers(len(PHRASES[kind]))][0]
    return text.format(where=half) + "."


def describe(diagnosis: str, lesions: dict[str, list[str]], fat_half: str | None,
             rng: np.random.Generator) -> tuple[str, list[dict]]:  # fmt: skip
    """The caption and its findings of one slide.

    ``lesions``: places by caption kind (a key of PHRASES: "tumour", "sheet", "aggregate", ...), in the order
    drawn; ``fat_half``: the half fat fills ("lower half"), None without fat. Lesion sentences come in a seeded
    order; the background sentences lead or follow them; the diagnosis sentence mostly ends the caption.
    """
    tissue = {"sheet": "lymphocytes", "aggregate": "lymphocytes"}
    background = [{"sentence": background_sentence("stroma", None, rng), "tissue": "stroma", "graded": True}]
    if fat_half is not None:
        background.append({"sentence": background_sentence("fat", fat_half, rng), "tissue": "fat", "graded": True})
    kinds = list(lesions)
    findings = [{"sentence": lesion_sentence(kinds[i], lesions[kinds[i]], rng),
                 "tissue": tissue.get(kinds[i], kinds[i]), "graded": True}
                for i in rng.permutation(len(kinds))]  # fmt: skip
    findings = background + findings if rng.random() < 0.6 else findings + background
    sentences = [finding["sentence"] for finding in findings]
    final = DIAGNOSIS_SENTENCES[rng.integers(len(DIAGNOSIS_SENTENCES))].format(diagnosis)
    sentences = [*sentences, final] if rng.random() < 0.75 else [final, *sentences]
    return " ".join(sentences), findings
