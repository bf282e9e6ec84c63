"""The standard step's batches: each training case's prompt samples (``data/dataset.py``), shared out among the
ranks (``DistributedSampler``), cut into batches of ``train.batch_images`` images and loaded by a DataLoader
(``train.num_workers`` workers; pinned memory on a GPU). A stream starts at any step, so a resumed run draws
what it would have drawn."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from medtextseg.config import Config
from medtextseg.data.dataset import PreparedCase, PromptSampleDataset, collate_prompt_samples
from medtextseg.data.preprocessed import CachedCase
from medtextseg.data.vocabulary import PromptVocabulary
from medtextseg.training.distributed import DistributedContext
from medtextseg.training.inputs import TrainingText
from medtextseg.utils.errors import MedTextSegError


class PromptBatches:
    """Batches of prompt samples for one rank.

    Args:
        config: the run's config (``data`` sets the samples, ``train`` the batch, seed and workers).
        cases: the training cases, in memory or references to the preprocessed cache.
        ctx: the distributed context (rank, world size, device).
        vocabulary: prompt sampling's vocabulary (``data.prompt_sampling``), or None.
        text: the training text (its structured forms and rewordings).

    Attributes:
        dataset: the ``PromptSampleDataset``.
        steps_per_epoch: batches per epoch on this rank.
    """

    def __init__(self, config: Config, cases: Sequence[PreparedCase | CachedCase], ctx: DistributedContext,
                 vocabulary: PromptVocabulary | None, text: TrainingText) -> None:
        data, train = config.data, config.train
        self.batch_images, self.num_workers, self.ctx = train.batch_images, train.num_workers, ctx
        self.dataset = PromptSampleDataset(cases, data.patch_size, data.prompts_per_image, data.kind_weights,
                                           data.flip_left_right, data.intensity_augmentation, train.seed,
                                           config.model.coordinates, vocabulary, text.structured,
                                           data.structured_prompts, paraphrases=text.paraphrases,
                                           paraphrase_probability=data.paraphrase_probability,
                                           slice_context=data.slice_context)
        self.sampler = DistributedSampler(self.dataset, num_replicas=ctx.world_size, rank=ctx.rank,
                                          shuffle=True, seed=train.seed, drop_last=True)
        per_rank = len(self.sampler)
        if per_rank < train.batch_images:
            raise MedTextSegError(f"config field 'train.batch_images' is {train.batch_images} but each "
                                  f"of {ctx.world_size} process(es) has only {per_rank} training images")
        self.steps_per_epoch = per_rank // train.batch_images

    def from_step(self, step: int) -> Iterator[dict]:
        """Batches from ``step`` on; the epoch and the position in it follow from the step."""
        epoch, skip = divmod(step, self.steps_per_epoch)
        while True:
            self.sampler.set_epoch(epoch)
            self.dataset.epoch = epoch
            batches = list(BatchSampler(self.sampler, self.batch_images, drop_last=True))
            # items are seeded by (seed, epoch, index): workers load and augment them, but cannot change them
            # pinned pages make the host-to-GPU copy asynchronous; on the CPU they would only cost
            yield from DataLoader(self.dataset, batch_sampler=batches[skip:], collate_fn=collate_prompt_samples,
                                  num_workers=self.num_workers, pin_memory=self.ctx.device.type == "cuda")
            epoch, skip = epoch + 1, 0


__all__ = ["PromptBatches"]
