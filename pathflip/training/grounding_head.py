"""Fit a trained model's patch-sentence grounding head on its training bags (`pathflip fit-grounding`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from modeling_pathflip import PathFLIPModel
from modeling_pathflip.configuration_pathflip import GROUNDING_HEAD_DEFAULTS
from modeling_pathflip.grounding_head_pathflip import (
    PRESENCE_POOLINGS,
    PathFLIPGroundingHead,
    partial_label_loss,
    pooled_presence,
    presence_loss,
)
from modeling_pathflip.subcaptions_pathflip import split_sentences


@dataclass(frozen=True)
class GroundingHeadOptions:
    """How the head is fitted. Defaults were chosen on held-out slides of the hierarchical cohort family's seeds
    0-2 and checked on fresh seeds (README, "On a cohort the recipe was not tuned on")."""

    members: int = GROUNDING_HEAD_DEFAULTS["members"]
    hidden_size: int = GROUNDING_HEAD_DEFAULTS["hidden_size"]
    embed_dim: int = GROUNDING_HEAD_DEFAULTS["embed_dim"]
    paraphrase_threshold: float = GROUNDING_HEAD_DEFAULTS["paraphrase_threshold"]
    steps: int = 400
    slides_per_step: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 1e-2
    seed: int = 0
    presence_sharpness: float = GROUNDING_HEAD_DEFAULTS["presence_sharpness"]
    # "mixed": each sentence's pooling (soft maximum, mean or soft minimum) is read from its text; "max": every
    # sentence pools by the soft maximum, which cannot tell an extent (a lymphoid sheet) or an absence (benign);
    # "mean": every sentence pools by the mean, so no text decides which patches count (an ablation).
    presence_pooling: str = GROUNDING_HEAD_DEFAULTS["presence_pooling"]
    partial_label_weight: float = 1.0
    presence_weight: float = 1.0
    # A slide counts against a sentence in the presence term only when none of its own sentences reaches this text
    # cosine to it: the text tower puts many true paraphrases far below paraphrase_threshold ("a region of cell
    # death", "an infarct-like necrotic area": 0.1-0.6), and each would otherwise be a false negative. Not lower:
    # sentences of one template that differ in what they name ("Impression: lymphoma." and "Impression: invasive
    # carcinoma.", 0.26-0.43) must stay negatives of each other for the pooled presence to tell classes apart.
    negative_threshold: float = 0.45
    # Each step shifts every patch of a slide by one random offset of this many feature standard deviations, so that
    # the head cannot recognise slides by their stain and learn the few slides of a rare wording by heart.
    slide_noise: float = 0.3
    # How much the model's attention scores add to the head's when grounding (0: the head alone). Not used in fitting.
    attention_weight: float = GROUNDING_HEAD_DEFAULTS["attention_weight"]

    def __post_init__(self) -> None:
        weights = (self.partial_label_weight, self.presence_weight)
        if min(weights) < 0 or max(weights) <= 0:
            raise ValueError(f"partial_label_weight and presence_weight must be >= 0 and not both 0, got {weights}.")
        for name in ("members", "hidden_size", "embed_dim", "steps", "slides_per_step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"grounding head option {name} must be a whole number >= 1, got {value!r}.")
        for name in ("paraphrase_threshold", "negative_threshold"):
            if not -1.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a cosine in (-1, 1], got {getattr(self, name)!r}.")
        if self.presence_pooling not in PRESENCE_POOLINGS:
            raise ValueError(f"presence_pooling must be one of {list(PRESENCE_POOLINGS)}, got "
                             f"{self.presence_pooling!r}.")  # fmt: skip
        if not 0 <= self.slide_noise < float("inf"):
            raise ValueError(f"slide_noise must be a number of standard deviations >= 0, got {self.slide_noise!r}.")
        if not 0 <= self.attention_weight < float("inf"):
            raise ValueError(f"attention_weight must be a number >= 0, got {self.attention_weight!r}.")
        if not (self.learning_rate > 0 and self.weight_decay >= 0 and self.presence_sharpness > 0):
            raise ValueError(
                "learning_rate and presence_sharpness must be > 0 and weight_decay >= 0, got "
                f"{self.learning_rate!r}, {self.presence_sharpness!r} and {self.weight_decay!r}."
            )


KEEP_BYTES = 2 * 1024**3


class _CaptionedBags:
    """A dataset's bags with the sentences of their captions as indices into one vocabulary."""

    def __init__(self, dataset, *, caption_column: str = "caption"):
        missing = {"features", caption_column} - set(dataset.column_names)
        if missing:
            raise ValueError(f"the dataset lacks the column(s) {sorted(missing)}; fitting a grounding head needs "
                             "patch features and a caption per slide (name the captions' column with "
                             "--caption-column).")  # fmt: skip
        kind = dataset.features[caption_column]
        if getattr(kind, "dtype", None) not in ("string", "large_string"):
            raise ValueError(f"column {caption_column!r} holds {type(kind).__name__} "
                             f"{getattr(kind, 'dtype', '')} values, not caption text; name the captions' column with "
                             "--caption-column.")  # fmt: skip
        if len(dataset) < 2:
            raise ValueError(f"fitting a grounding head needs at least 2 captioned slides, got {len(dataset)}.")
        self.rows = dataset.with_format("numpy", columns=["features"])
        self.kept: dict[int, torch.Tensor] = {}
        sentences = [split_sentences(str(caption or "")) for caption in dataset[caption_column]]
        empty = [index for index, found in enumerate(sentences) if not found]
        if empty:
            raise ValueError(f"{len(empty)} slide(s) have no caption sentence (first: row {empty[0]}); give every "
                             "slide a caption, or leave those rows out.")  # fmt: skip
        self.vocabulary = list(dict.fromkeys(text for found in sentences for text in found))
        position = {text: number for number, text in enumerate(self.vocabulary)}
        self.sentences = [[position[text] for text in found] for found in sentences]

    def __len__(self) -> int:
        return len(self.sentences)

    def features(self, index: int) -> torch.Tensor:
        if index in self.kept:
            return self.kept[index]
        return torch.as_tensor(np.asarray(self.rows[index]["features"], dtype=np.float32))

    def feature_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of every patch feature over all bags (one pass, which also keeps the bags
        in memory while they fit in KEEP_BYTES, so that training steps do not read them again)."""
        total = count = square = kept_bytes = 0
        for index in tqdm(range(len(self)), desc="patch statistics", leave=False):
            features = self.features(index)
            if features.ndim != 2 or not len(features):
                raise ValueError(f"row {index} of the dataset has no patch features (shape {tuple(features.shape)}); "
                                 "leave slides without tissue out before fitting.")  # fmt: skip
            kept_bytes += features.numel() * features.element_size()
            if kept_bytes <= KEEP_BYTES:
                self.kept[index] = features
            features = features.double()
            total, square, count = total + features.sum(0), square + (features**2).sum(0), count + len(features)
        mean = total / count
        return mean.float(), ((square / count - mean**2).clamp_min(0).sqrt() + 1e-6).float()


@torch.no_grad()
def text_embeddings(model: PathFLIPModel, processor, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """The model's normalised text embeddings of ``texts`` ``[T, E]``."""
    chunks = []
    for start in range(0, len(texts), batch_size):
        encoded = processor(text=texts[start : start + batch_size])
        chunks.append(model.get_text_features(**{name: value.to(model.device) for name, value in encoded.items()}))
    return torch.nn.functional.normalize(torch.cat(chunks).float(), dim=-1).cpu()


def fit_grounding_head(model: PathFLIPModel, processor, dataset, *, options: GroundingHeadOptions | None = None,
                       caption_column: str = "caption") -> PathFLIPModel:  # fmt: skip
    """Fit a grounding head on ``dataset``'s bags and captions (the model's own weights stay as they are),
    attach it to ``model`` and record its shape in ``model.config.grounding_head``; returns ``model``."""
    options = options or GroundingHeadOptions()
    bags = _CaptionedBags(dataset, caption_column=caption_column)
    dimensions = bags.features(0).shape[-1]
    if model.config.patch_dim != dimensions:
        raise ValueError(f"the dataset's patch features have {dimensions} dimensions but the model reads "
                         f"{model.config.patch_dim}; fit the head on the bags the model was trained on.")  # fmt: skip
    model.eval()
    vocabulary = text_embeddings(model, processor, bags.vocabulary)
    mentions, known = presence_targets(vocabulary, bags.sentences, options)
    shape = {"members": options.members, "hidden_size": options.hidden_size, "embed_dim": options.embed_dim,
             "paraphrase_threshold": options.paraphrase_threshold, "vocabulary_size": len(bags.vocabulary),
             "presence_sharpness": options.presence_sharpness,
             "presence_pooling": options.presence_pooling}  # fmt: skip
    with torch.random.fork_rng():  # the members' initialisation follows the seed; the caller's generator is left alone
        torch.manual_seed(options.seed)
        head = PathFLIPGroundingHead(model.config.patch_dim, vocabulary.shape[1], **shape)
    mean, std = bags.feature_statistics()
    head.feature_mean.copy_(mean)
    head.feature_std.copy_(std)
    head.vocabulary.copy_(vocabulary)
    head.text_mean.copy_(vocabulary.mean(0))
    head.text_std.copy_(vocabulary.std(0, unbiased=False) + 1e-6)
    _train(head, bags, vocabulary, mentions, known, options)
    broken = [name for name, tensor in head.state_dict().items() if not torch.isfinite(tensor).all()]
    if broken:
        raise ValueError(f"fitting diverged: {len(broken)} of the head's tensors hold NaN or Inf (e.g. {broken[0]}) "
                         f"at learning rate {options.learning_rate}; lower --learning-rate.")  # fmt: skip
    model.grounding_head = head.to(model.device).eval()
    model.config.grounding_head = {**shape, "attention_weight": options.attention_weight}
    return model


def presence_targets(vocabulary: torch.Tensor, sentences: list[list[int]], options: GroundingHeadOptions
                     ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``[slides, V]``: whether each slide mentions each vocabulary sentence (itself or a paraphrase, cosine >=
    ``paraphrase_threshold``), and whether that is known: mentioned, or no sentence of the slide reaches
    ``negative_threshold``."""
    similarity = vocabulary @ vocabulary.T
    mentions = torch.stack([(similarity[own] >= options.paraphrase_threshold).any(0) for own in sentences])
    near = torch.stack([(similarity[own] >= options.negative_threshold).any(0) for own in sentences])
    return mentions, mentions | ~near


def _train(head: PathFLIPGroundingHead, bags: _CaptionedBags, vocabulary: torch.Tensor, mentions: torch.Tensor,
           known: torch.Tensor, options: GroundingHeadOptions) -> None:  # fmt: skip
    """All members at once, each on its own draw of slides per step (their losses do not share parameters)."""
    optimizer = torch.optim.AdamW(head.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)
    draws = [torch.Generator().manual_seed(options.seed + member) for member in range(options.members)]
    noise = torch.Generator().manual_seed(options.seed + options.members)
    head.train()
    for _ in tqdm(range(options.steps), desc="grounding head"):
        loss = 0.0
        for member, draw in enumerate(draws):
            chosen = torch.randperm(len(bags), generator=draw)[: options.slides_per_step].tolist()
            bank = sorted({sentence for slide in chosen for sentence in bags.sentences[slide]})
            features = [bags.features(slide) for slide in chosen]
            if options.slide_noise:
                shifts = options.slide_noise * head.feature_std * torch.randn(len(chosen), len(head.feature_std),
                                                                              generator=noise)  # fmt: skip
                features = [patches + shift for patches, shift in zip(features, shifts, strict=True)]
            patch_slide = torch.cat([torch.full((len(f),), k) for k, f in enumerate(features)])
            scores = head.member_scores(member, torch.cat(features), vocabulary[bank])  # [N, S]
            slide_mentions = mentions[chosen][:, bank]
            partial_label = partial_label_loss(scores, slide_mentions[patch_slide])
            pooled = pooled_presence(scores, patch_slide, len(chosen), head.member_pooling(member, vocabulary[bank]),
                                     options.presence_sharpness)  # fmt: skip
            presence = presence_loss(pooled, slide_mentions, known[chosen][:, bank])
            loss = loss + options.partial_label_weight * partial_label + options.presence_weight * presence
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    head.eval()
