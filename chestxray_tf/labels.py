"""The ChestX-ray14 label vocabulary (SPEC §0).

The 14 classes in the canonical order used everywhere in the package (the 8 classes that
carry boxes first), and the aliases under which NIH's own files spell some of them.
"""

CLASS_NAMES = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NUM_CLASSES = len(CLASS_NAMES)

# The classes that BBox_List_2017.csv annotates with boxes.
BOXED_CLASSES = CLASS_NAMES[:8]

# The value of `Finding Labels` for an image without any of the 14 findings.
NO_FINDING = "No Finding"

# Spellings found in NIH's files -> canonical class name. BBox_List_2017.csv writes
# `Infiltrate` where Data_Entry_2017.csv writes `Infiltration`.
ALIASES = {
    "Infiltrate": "Infiltration",
}

CLASS_INDEX = {name: i for i, name in enumerate(CLASS_NAMES)}


def canonical_name(label, source="<unknown>"):
    """Returns the canonical class name of `label` (stripped, aliases resolved).

    Args:
        label: a class name as written in an NIH file.
        source: where the label came from (e.g. "BBox_List_2017.csv row 12"); named in errors.

    Raises:
        ValueError: `label` is neither a class name nor a known alias.
    """
    name = str(label).strip()
    name = ALIASES.get(name, name)
    if name not in CLASS_INDEX:
        raise ValueError(
            f"unknown label {label!r} in {source}; expected one of {', '.join(CLASS_NAMES)} "
            f"(or an alias: {', '.join(ALIASES)})")
    return name


def class_index(label, source="<unknown>"):
    """Returns the canonical index in [0, 14) of `label` (aliases resolved)."""
    return CLASS_INDEX[canonical_name(label, source)]


def parse_finding_labels(value, source="<unknown>"):
    """Splits a `Finding Labels` cell (`A|B|C` or `No Finding`) into canonical names.

    Raises:
        ValueError: an unknown label, an empty cell, or `No Finding` mixed with findings.
    """
    text = "" if value is None else str(value).strip()
    if not text or text.lower() == "nan":
        raise ValueError(f"empty 'Finding Labels' in {source}")
    parts = [p.strip() for p in text.split("|")]
    if NO_FINDING in parts:
        if len(parts) > 1:
            raise ValueError(f"'{NO_FINDING}' mixed with findings {text!r} in {source}")
        return []
    return [canonical_name(p, source) for p in parts]
