"""Built-in radiologist wording for common classes: prompt templates and per-class synonyms.

Pure data, read by :mod:`medtextseg.data.vocabulary`. Keys are normalised class names (lower case, words joined by
``_``, British spelling: ``tumour``, ``oedema``); the first synonym of each class is its canonical wording. A paired
organ is stored once without its side (``kidney``); the side is added from the label name (``kidney_L`` -> "left
kidney"). Synonyms never start with an article: every template supplies "the".
"""

from __future__ import annotations

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "segment the {name}",
    "outline the {name}",
    "delineate the {name}",
    "where is the {name}?",
    "your goal is to spot the {name}",
    "identify the {name}",
    "find the {name}",
    "segment the {name} region",
    "contour the {name}",
    "show me the {name}",
)

SYNONYMS: dict[str, tuple[str, ...]] = {
    # abdominal organs and vessels
    "liver": ("liver", "hepatic parenchyma", "liver parenchyma"),
    "spleen": ("spleen", "splenic parenchyma"),
    "kidney": ("kidney", "renal parenchyma"),
    "kidneys": ("kidneys", "renal parenchyma of both kidneys"),
    "pancreas": ("pancreas", "pancreatic parenchyma", "pancreatic gland"),
    "gallbladder": ("gallbladder", "gall bladder"),
    "stomach": ("stomach", "gastric wall and lumen"),
    "aorta": ("aorta", "abdominal aorta", "aortic lumen"),
    "inferior_vena_cava": ("inferior vena cava", "IVC", "infrahepatic vena cava"),
    "portal_vein_and_splenic_vein": ("portal and splenic veins", "portal venous system"),
    "oesophagus": ("oesophagus", "esophagus"),
    "duodenum": ("duodenum", "duodenal wall"),
    "adrenal_gland": ("adrenal gland", "suprarenal gland"),
    "urinary_bladder": ("urinary bladder", "bladder"),
    "colon": ("colon", "large bowel"),
    "small_bowel": ("small bowel", "small intestine"),
    "rectum": ("rectum", "rectal wall"),
    "hepatic_vessels": ("hepatic vessels", "intrahepatic vessels", "liver vasculature"),
    # breast (Duke-Breast-Cancer-MRI 3D breast, fibroglandular tissue and vessel segmentations)
    "breast": ("breast", "breast tissue", "whole breast"),
    "fibroglandular_tissue": ("fibroglandular tissue", "dense breast tissue", "FGT", "glandular breast tissue"),
    "breast_vessels": ("breast blood vessels", "breast vasculature", "blood vessels of the breast"),
    # pelvis
    "prostate": ("prostate", "prostate gland", "prostatic gland"),
    "peripheral_zone": ("peripheral zone", "prostatic peripheral zone", "PZ of the prostate"),
    "transition_zone": ("transition zone", "prostatic transition zone", "TZ of the prostate"),
    "prostate_lesion": ("prostate lesion", "suspicious prostate lesion", "prostate cancer lesion"),
    # thorax and heart
    "lung": ("lung", "pulmonary parenchyma"),
    "heart": ("heart", "cardiac silhouette"),
    "left_atrium": ("left atrium", "left atrial cavity", "left atrial blood pool"),
    "left_ventricle": ("left ventricle", "left ventricular cavity"),
    "right_ventricle": ("right ventricle", "right ventricular cavity"),
    "myocardium": ("myocardium", "left ventricular myocardium"),
    # brain
    "brain": ("brain", "brain parenchyma"),
    "hippocampus": ("hippocampus", "hippocampal formation"),
    "anterior_hippocampus": ("anterior hippocampus", "hippocampal head"),
    "posterior_hippocampus": ("posterior hippocampus", "hippocampal body and tail"),
    # tumours and lesions
    "tumour": ("tumour", "lesion", "mass"),
    "cancer": ("cancer", "malignant tumour", "tumour"),
    "liver_tumour": ("liver tumour", "hepatic tumour", "liver lesion", "hepatic lesion"),
    "kidney_tumour": ("kidney tumour", "renal tumour", "renal mass"),
    "kidney_cyst": ("kidney cyst", "renal cyst"),
    "pancreas_tumour": ("pancreatic tumour", "pancreatic mass", "pancreatic lesion"),
    "lung_tumour": ("lung tumour", "pulmonary nodule", "lung mass"),
    "colon_cancer": ("colon cancer", "colorectal tumour", "colonic mass"),
    "breast_tumour": ("breast tumour", "breast lesion", "breast mass", "enhancing breast lesion"),
    "brain_tumour": ("brain tumour", "intracranial tumour", "brain lesion"),
    "glioma": ("glioma", "glial tumour", "brain tumour"),
    "meningioma": ("meningioma", "meningeal tumour", "dural-based extra-axial mass"),
    "pituitary_tumour": ("pituitary tumour", "pituitary adenoma", "sellar mass"),
    # brain tumour sub-regions (BraTS)
    "enhancing_tumour": ("enhancing tumour", "contrast-enhancing tumour", "enhancing part of the tumour"),
    "non_enhancing_tumour": ("non-enhancing tumour core", "necrotic and non-enhancing tumour",
                             "necrotic tumour core"),
    "oedema": ("peritumoural oedema", "oedema around the tumour", "FLAIR hyperintense oedema"),
    "tumour_core": ("tumour core", "enhancing and necrotic tumour core", "core of the tumour"),
    "whole_tumour": ("whole tumour", "tumour with its surrounding oedema", "complete tumour extent"),
}

# other spellings and dataset names of the classes above (normalised, after American -> British spelling)
ALIASES: dict[str, str] = {
    "hepatic_parenchyma": "liver",
    "ivc": "inferior_vena_cava",
    "postcava": "inferior_vena_cava",
    "vena_cava_inferior": "inferior_vena_cava",
    "esophagus": "oesophagus",
    "adrenal": "adrenal_gland",
    "bladder": "urinary_bladder",
    "gall_bladder": "gallbladder",
    "small_intestine": "small_bowel",
    "vessel": "hepatic_vessels",
    "vessels": "hepatic_vessels",
    "pz": "peripheral_zone",
    "tz": "transition_zone",
    "prostate_gland": "prostate",
    "breasts": "breast",
    "whole_breast": "breast",
    "fgt": "fibroglandular_tissue",
    "dense": "fibroglandular_tissue",
    "dense_tissue": "fibroglandular_tissue",
    "fibroglandular": "fibroglandular_tissue",
    "breast_blood_vessels": "breast_vessels",
    "breast_vasculature": "breast_vessels",
    "lesion": "tumour",
    "mass": "tumour",
    "liver_lesion": "liver_tumour",
    "hepatic_tumour": "liver_tumour",
    "liver_cancer": "liver_tumour",
    "renal_tumour": "kidney_tumour",
    "kidney_mass": "kidney_tumour",
    "renal_cyst": "kidney_cyst",
    "pancreatic_tumour": "pancreas_tumour",
    "pancreas_cancer": "pancreas_tumour",
    "lung_nodule": "lung_tumour",
    "colon_cancer_primaries": "colon_cancer",
    "breast_lesion": "breast_tumour",
    "breast_cancer": "breast_tumour",
    "pituitary": "pituitary_tumour",
    "pituitary_adenoma": "pituitary_tumour",
    "la": "left_atrium",
    "lv": "left_ventricle",
    "rv": "right_ventricle",
    "myo": "myocardium",
    "anterior": "anterior_hippocampus",
    "posterior": "posterior_hippocampus",
    "et": "enhancing_tumour",
    "enhancing": "enhancing_tumour",
    "net": "non_enhancing_tumour",
    "ncr": "non_enhancing_tumour",
    "ncr_net": "non_enhancing_tumour",
    "necrosis": "non_enhancing_tumour",
    "necrotic_tumour_core": "non_enhancing_tumour",
    "non_enhancing_tumour_core": "non_enhancing_tumour",
    "peritumoural_oedema": "oedema",
    "ed": "oedema",
    "tc": "tumour_core",
    "wt": "whole_tumour",
}

# American -> British spelling, applied to each word of a normalised name before the table lookup
SPELLING: dict[str, str] = {
    "tumor": "tumour",
    "tumors": "tumours",
    "edema": "oedema",
    "peritumoral": "peritumoural",
    "esophagus": "oesophagus",
}

LEFT_WORDS = frozenset({"left", "l", "lt", "sinister"})
RIGHT_WORDS = frozenset({"right", "r", "rt", "dexter"})
