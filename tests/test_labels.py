import pytest

from chestxray_tf import labels


def test_canonical_order_and_boxed_classes():
    assert labels.CLASS_NAMES == (
        "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
        "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
        "Hernia")
    assert labels.BOXED_CLASSES == labels.CLASS_NAMES[:8]
    assert labels.NUM_CLASSES == 14


def test_alias_resolves_to_infiltration():
    assert labels.canonical_name("Infiltrate") == "Infiltration"
    assert labels.class_index(" Infiltrate ") == labels.CLASS_NAMES.index("Infiltration")


def test_unknown_label_names_label_and_source():
    with pytest.raises(ValueError, match=r"'Pneumonitis' in BBox_List_2017.csv line 7"):
        labels.canonical_name("Pneumonitis", "BBox_List_2017.csv line 7")


def test_parse_finding_labels():
    assert labels.parse_finding_labels("No Finding") == []
    assert labels.parse_finding_labels("Mass|Nodule") == ["Mass", "Nodule"]
    with pytest.raises(ValueError, match="mixed"):
        labels.parse_finding_labels("No Finding|Mass", "x.csv line 3")
    with pytest.raises(ValueError, match="empty 'Finding Labels' in x.csv line 4"):
        labels.parse_finding_labels("", "x.csv line 4")
