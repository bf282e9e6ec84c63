"""The notebook API: load_model + segment on files, outputs on the input grid, text that changes the answer."""

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import as_if_trained
from medtextseg import MedTextSegError, load_model, segment
from medtextseg.config import Config
from medtextseg.models.checkpoint import save_checkpoint
from medtextseg.models.factory import create_model


def test_segment_from_a_checkpoint_file(tmp_path, dataset_3d):
    config = Config.load("default", ["model.channels=[4,8]", "model.strides=[[1,1,1],[2,2,2]]"])
    torch.manual_seed(0)
    model = as_if_trained(create_model(config.model, 384))  # as after training: the prompt changes the answer
    checkpoint = save_checkpoint(tmp_path / "m.pt", {"model": model.state_dict(), "config": config.model_dump(),
                                                      "text_dim": 384})
    images = sorted((dataset_3d / "imagesTr").glob("synth_000_*.nii.gz"))
    predictor = load_model(checkpoint)
    gland, lesion = segment(images, ["the prostate gland", "the lesion in the left PZ"], predictor)
    assert gland.mask.shape == nib.load(str(images[0])).shape == gland.probability.shape
    assert not np.allclose(gland.probability, lesion.probability)
    assert "Segmentation(prompt='the prostate gland'" in repr(gland)
    [again] = segment(images, "the prostate gland", checkpoint)  # a path works as the model too
    np.testing.assert_allclose(again.probability, gland.probability, atol=1e-6)
    assert gland.uncertainty.shape == gland.mask.shape  # the entropy of a sigmoid model, on the input grid
    [plain] = predictor.predict(images, ["the prostate gland"], uncertainty=False)
    assert plain.uncertainty is None
    np.testing.assert_allclose(plain.probability, gland.probability, atol=1e-6)
    with pytest.raises(MedTextSegError, match=r"the model takes 3 image file\(s\), one per channel.*got 2"):
        segment(images[:2], "the gland", predictor)


def test_a_text_encoder_that_differs_from_training_is_refused_or_flagged(tmp_path, dataset_3d):
    config = Config.load("default", ["model.channels=[4,8]", "model.strides=[[1,1,1],[2,2,2]]"])
    model = create_model(config.model, 768)  # as if trained with a 768-d encoder (a BERT)
    checkpoint = save_checkpoint(tmp_path / "m.pt", {"model": model.state_dict(), "config": config.model_dump(),
                                                      "text_dim": 768, "text_encoder": "Bio_ClinicalBERT-t32"})
    images = sorted((dataset_3d / "imagesTr").glob("synth_000_*.nii.gz"))
    with pytest.warns(UserWarning, match="trained with text encoder 'Bio_ClinicalBERT-t32'"):
        predictor = load_model(checkpoint)
    with pytest.raises(MedTextSegError, match=r"768-d prompt embeddings\) but its text encoder 'minilm' now gives "
                                              r"384-d ones"):
        segment(images, "the prostate gland", predictor)
