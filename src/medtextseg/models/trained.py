"""A trained model read from its checkpoint: the network, the config it came with and what using it needs.

:func:`load_trained_model` is the one way a trained model is loaded (prediction, presence calibration, the
benchmarks). It reads the weights without running code, from a checkpoint file, a run folder (its ``best.pt``)
or a model package (``.zip``), rebuilds the network from the config that came with them and checks, key by key,
that the weights fit it. What the network reads is the network's own declaration
(:class:`~medtextseg.models.input_spec.InputSpec`); how it is asked (threshold, mirroring, refiner, member) is
the config's ``inference`` section, a frozen value the caller passes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medtextseg.config import Config
from medtextseg.models.checkpoint import checkpoint_file, read_state
from medtextseg.models.factory import create_model
from medtextseg.models.input_spec import InputSpec
from medtextseg.models.package_format import is_model_package, read_package
from medtextseg.utils.errors import MedTextSegError


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The state of a checkpoint file, of ``best.pt`` (else ``last.pt``) of a run folder, or of the weights of a
    model package (checked member by member first), read without running any code.

    Raises:
        MedTextSegError: no checkpoint there, an unreadable file, a file that would need code to load
            (a pickled payload), a dict without model weights and config, or a model package refused
            (:func:`medtextseg.models.package_format.read_package`).
    """
    path = checkpoint_file(path)
    if not path.is_file():
        raise MedTextSegError(f"{path}: checkpoint not found")
    if is_model_package(path):
        return read_package(path).state
    with open(path, "rb") as handle:
        return read_state(handle, str(path))


@dataclass(frozen=True)
class TrainedModel:
    """A trained network ready to be asked, with what it was trained with.

    Attributes:
        network: the segmenter (``TextGuidedUNet`` or ``CoTrainedSegmenters``) in eval mode, on its device.
        config: the resolved config it was trained with (``inference`` included).
        text_dim: the width D of the prompt features it reads.
        text_encoder: the name of the text encoder it was trained with (None in old checkpoints).
        channel_names: the image channels, in the order it reads them (empty when the data named none).
        checkpoint: the file it was read from.
    """

    network: nn.Module = field(repr=False)
    config: Config = field(repr=False)
    text_dim: int
    text_encoder: str | None
    channel_names: tuple[str, ...]
    checkpoint: Path

    @property
    def input_spec(self) -> InputSpec:
        return self.network.input_spec


def check_weights(path: Path, weights: Any, expected: dict[str, torch.Tensor]) -> None:
    """Refuse weights that ``load_state_dict`` would reject with a many-line RuntimeError, naming the first key."""
    if not isinstance(weights, dict):
        raise MedTextSegError(f"{path}: its 'model' entry is not a dict of weights; not a checkpoint medtextseg "
                              "train wrote")
    problems = [f"missing {key}" for key in expected if key not in weights]
    problems += [f"unexpected {key}" for key in weights if key not in expected]
    shapes = {key: (list(getattr(weights[key], "shape", [])), list(getattr(value, "shape", [])))
              for key, value in expected.items() if key in weights}
    problems += [f"{key} has shape {found}, the model {wanted}" for key, (found, wanted) in shapes.items()
                 if found != wanted]
    if problems:
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise MedTextSegError(f"{path}: its weights do not fit the model its config describes ({problems[0]}{more}); "
                              "use the file medtextseg train wrote, unchanged")


def load_trained_model(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Load a checkpoint file, a run folder (its ``best.pt``, else ``last.pt``) or a model package.

    Raises:
        MedTextSegError: no readable checkpoint there (:func:`load_checkpoint`), one without the prompt width or
            with a config this version refuses, or weights that do not fit the network its config describes;
            each names the file.
    """
    path = checkpoint_file(path)
    state = load_checkpoint(path)
    if type(state.get("text_dim")) is not int:
        raise MedTextSegError(f"{path}: no 'text_dim' (the prompt feature size the model was trained with); "
                              "not a checkpoint medtextseg train wrote")
    try:
        config = Config.from_dict(state.get("config"))
    except MedTextSegError as error:  # name the file: the config came with it
        raise MedTextSegError(f"{path}: its config: {error}") from None
    network = create_model(config.model, state["text_dim"])
    check_weights(path, state["model"], network.state_dict())
    network.load_state_dict(state["model"])
    network.to(device).eval()
    return TrainedModel(network, config, state["text_dim"], state.get("text_encoder"),
                        tuple(state.get("channel_names", [])), path)


__all__ = ["TrainedModel", "check_weights", "load_checkpoint", "load_trained_model"]
