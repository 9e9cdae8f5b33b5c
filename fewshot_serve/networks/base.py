"""What every meta-learned network shares: a params-dict forward, fast weights, the shared head row.

Networks are ``nn.Module``s that own the meta-parameters, but compute as pure functions of a
params dict (:meth:`MetaNetwork.apply_params`), so one instance serves any number of concurrent
adaptations without copies and without ever being modified. Their normalization (BatchNorm with
the support set's statistics) is in :mod:`.norms`.

One choice here matters for serving:

* **One shared head row** (Ye & Chao, ICLR 2022). The head holds a single learned weight row and
  bias; a task with N classes starts from N identical copies of it. Identical rows make the
  initial logits equal for every class, so the adapted model is invariant to the order of the
  classes and works for any N >= 2 regardless of the N used in meta-training. Unlike a
  zero-initialized head, the shared row is itself meta-learned (zero is one point it may learn).
  As with a zero head, the first inner step moves only the head (the loss gradient reaching the
  features, sum_c (p_c - y_c) w, is zero while the rows are equal), so recipes use >= 2 steps.
  The inner loop takes that step from one forward pass to the head's input, with no backward
  through the body (:attr:`MetaNetwork.head_keys`, :meth:`MetaNetwork.head_input`): exact by
  construction, and the body's step-1 learning rates get an exactly zero meta-gradient.

Two MAML++ options (Antoniou et al., ICLR 2019) live here too, because they are meta-parameters
that serving must read from the model file like any weight:

* **Learned per-step learning rates** (``lr_steps > 0``): ``step_lrs[i, k]`` is the inner learning
  rate of the i-th fast weight (in :meth:`MetaNetwork.fast_weight_names` order) at step k.
* **Per-step BatchNorm weights** (``norm_states > 0``, Conv4): each norm weight and bias has one
  row per state of the inner loop (row k is used after k steps). They are learned by the outer
  loop only, so the inner loop does not adapt them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import skip_init  # frozen layers get their weights copied in: no random init

#: Parameters a task copies once per class (dimension 0) before its inner loop.
HEAD_KEYS = ("head.weight", "head.bias")


def step_lr(inner_lrs: Sequence[float], step: int) -> float:
    """A fixed schedule's learning rate at ``step``; steps past its end reuse its last entry."""
    return inner_lrs[min(step, len(inner_lrs) - 1)]


class MetaNetwork(nn.Module):
    """A network whose computation is a pure function of a params dict.

    The modules only own and name the meta-parameters. :meth:`apply_params` computes with any
    params dict without touching the module, so concurrent adaptations on one instance are safe
    (``torch.func.functional_call`` would swap the module's attributes during each call, and two
    threads would see each other's weights).
    """

    task_kind: str  # "classification" or "regression"
    input_kind: str = "image"  # what it classifies: "image" or "text" (token ids)
    lr_steps: int = 0  # learned per-step inner learning rates (MAML++ LSLR): how many steps
    #: Proto-MAML: each class's head row starts from its support features' mean
    #: (:meth:`SharedHeadClassifier.prototype_rows`)
    prototype_head: bool = False
    norm_states: int = 0  # per-step BatchNorm weights (MAML++ BNWB): rows per norm parameter

    @classmethod
    def config_problems(cls, config: dict[str, Any]) -> list[str]:
        """What is wrong with ``config`` (a :meth:`config`, perhaps from an untrusted model file) as this
        architecture's: its keys and the sizes that decide what gets allocated, checked before building.
        Each architecture states its own rules; the constructor's checks of values still apply on top."""
        raise NotImplementedError

    @classmethod
    def input_shapes(cls, config: dict[str, Any]) -> list[tuple[Any, Any]]:
        """(image side, channels) of each image input ``config`` expects: what the preprocessing must make."""
        return [(config.get("image_size"), config.get("in_channels"))]

    def add_step_lrs(self, steps: int) -> None:
        """Give every fast weight its own learned learning rate per inner step (call after building)."""
        self.lr_steps = steps
        if steps:
            self.step_lrs = nn.Parameter(torch.zeros(len(self.fast_weight_names()), steps))

    def reset_step_lrs(self, inner_lrs: Sequence[float]) -> None:
        """Start the learned learning rates at the fixed schedule ``inner_lrs`` (last entry repeats)."""
        with torch.no_grad():
            for step in range(self.lr_steps):
                self.step_lrs[:, step] = step_lr(inner_lrs, step)

    def fast_weight_names(self) -> list[str]:
        """The parameters the inner loop adapts, in ``named_parameters`` order."""
        return [name for name, _ in self.named_parameters() if self._is_fast_weight(name)]

    def _is_fast_weight(self, name: str) -> bool:
        return name != "step_lrs"

    def inner_lrs_at(
        self, params: dict[str, Tensor], step: int, inner_lrs: Sequence[float], names: Sequence[str]
    ) -> dict[str, Any]:
        """Learning rate of each fast weight at inner step ``step`` (learned ones if the network has them).

        ``names`` are :meth:`fast_weight_names`, which the caller computes once per adaptation.
        """
        if self.lr_steps:
            column = params["step_lrs"][:, min(step, self.lr_steps - 1)]
            return {name: column[i] for i, name in enumerate(names)}
        return dict.fromkeys(names, step_lr(inner_lrs, step))

    def at_step(self, params: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """The params :meth:`apply_params` takes in the inner loop's state ``step`` (after that many steps)."""
        return {k: v for k, v in params.items() if k != "step_lrs"} if self.lr_steps else params

    def apply_params(self, params: dict[str, Tensor], x: Tensor, n_ref: int | None = None) -> Tensor:
        """The network's output on ``x`` with ``params``; normalization statistics from ``x[:n_ref]``."""
        raise NotImplementedError

    #: The head's parameters when the first inner step moves only them (a shared head row); else empty.
    head_keys: tuple[str, ...] = ()

    def head_input(self, params: dict[str, Tensor], h: Tensor, n_ref: int | None = None) -> Tensor:
        """:meth:`adapted_part` up to the head: ``adapted_part == head_logits(head_input(h))`` (with ``head_keys``)."""
        raise NotImplementedError(f"{type(self).__name__} has no shared head")

    def head_logits(self, params: dict[str, Tensor], features: Tensor) -> Tensor:
        """The head on :meth:`head_input`'s features."""
        raise NotImplementedError(f"{type(self).__name__} has no shared head")

    def frozen_part(self, params: dict[str, Tensor], x: Tensor, n_ref: int | None = None) -> Tensor:
        """The computation before the first fast weight (identity unless the inner loop skips early layers).

        It is the same at every inner step, so the inner loop computes it once per image and
        runs only :meth:`adapted_part` per step: ``apply_params == adapted_part(frozen_part(x))``.
        """
        return x

    def adapted_part(self, params: dict[str, Tensor], h: Tensor, n_ref: int | None = None) -> Tensor:
        """The rest of the network, from :meth:`frozen_part`'s output ``h``."""
        return self.apply_params(params, h, n_ref)

    def join_frozen(self, parts: Sequence[Tensor]) -> Tensor:
        """:meth:`frozen_part` outputs of several batches as one batch (a text encoder pads them to one length)."""
        return torch.cat(list(parts))

    def fold(self, params: dict[str, Tensor], x_support: Tensor) -> nn.Module:
        """The adapted classifier as a plain eval-mode network, images -> logits (serving, ONNX).

        Logits, not probabilities: serving appends the model file's calibrated softmax
        (:class:`~fewshot_serve.calibration.CalibratedSoftmax`), the same for every network."""
        raise NotImplementedError(f"{type(self).__name__} does not classify images")

    def in_frozen_part(self, name: str) -> bool:
        """Whether parameter ``name`` is used only by :meth:`frozen_part`."""
        return False

    @property
    def has_per_image_frozen_part(self) -> bool:
        """Whether :meth:`frozen_part` has layers and computes each image on its own (no batch
        statistics), so that any runtime may compute it once per image (onnxruntime in serving)."""
        per_image = getattr(self, "norm", "fixed") == "fixed"
        return per_image and any(self.in_frozen_part(name) for name, _ in self.named_parameters())

    def forward(self, x: Tensor, n_ref: int | None = None) -> Tensor:
        """The output before any adaptation (inner-loop state 0)."""
        return self.apply_params(self.at_step(dict(self.named_parameters()), 0), x, n_ref)

    def config(self) -> dict[str, Any]:
        """The architecture's hyper-parameters, enough for :func:`build_network` to rebuild it."""
        raise NotImplementedError

    def task_parameters(self, meta_params: dict[str, Tensor], ways: int) -> dict[str, Tensor]:
        """The parameters a task with ``ways`` classes starts its inner loop from."""
        return dict(meta_params)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError


class SharedHeadClassifier(MetaNetwork):
    """An image classifier whose head is the one shared row, copied once per class of a task."""

    task_kind = "classification"
    head_keys = HEAD_KEYS

    def adapted_part(self, params: dict[str, Tensor], h: Tensor, n_ref: int | None = None) -> Tensor:
        return self.head_logits(params, self.head_input(params, h, n_ref))

    def apply_params(self, params: dict[str, Tensor], x: Tensor, n_ref: int | None = None) -> Tensor:
        return self.adapted_part(params, self.frozen_part(params, x, n_ref), n_ref)

    def prototype_rows(self, features: Tensor, labels: Tensor, ways: int) -> dict[str, Tensor]:
        """What Proto-MAML (Triantafillou et al. 2020) adds to each class's copy of the head row
        before the first step: ``2 μ_c`` to its weights and ``-|μ_c|²`` to its bias, where ``μ_c``
        is the mean of the class's support ``features`` (:meth:`head_input`).

        Since ``2 μ_c·x - |μ_c|² = |x|² - |x - μ_c|²``, the logits then rank a query's classes by
        its distance to their means (nearest class mean) before any step; one step from a shared
        row alone would rank them by the dot product ``μ_c·x``, which favours classes whose
        support features agree. Differentiable in the features, so second-order MAML sees it.
        """
        means = class_mean_features(features, labels, ways)
        return {"head.weight": 2 * means, "head.bias": -(means * means).sum(1)}

    def task_parameters(self, meta_params: dict[str, Tensor], ways: int) -> dict[str, Tensor]:
        params = dict(meta_params)
        for key in HEAD_KEYS:
            params[key] = meta_params[key].expand(ways, *meta_params[key].shape[1:]).clone()
        return params

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs, targets)


#: What an ensemble member's config leaves to the ensemble: its learned rates and its head.
ENSEMBLE_OWNED_KEYS = frozenset({"lr_steps", "prototype_head"})


def class_mean_features(features: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Each class's mean of ``features`` ``[n, d]`` with ``labels`` in ``range(ways)``: ``[ways, d]``."""
    # one-hot by comparison, not F.one_hot: it also works under torch.func.vmap
    members = (labels.unsqueeze(0) == torch.arange(ways, device=labels.device).unsqueeze(1)).to(features.dtype)
    return (members @ features) / members.sum(1, keepdim=True)


def adapts_head_only(network: MetaNetwork) -> bool:
    """Whether the inner loop moves only the head row (the frozen part is the whole backbone)."""
    return set(network.fast_weight_names()) <= set(HEAD_KEYS)


class PooledFeatureClassifier(SharedHeadClassifier):
    """A backbone's pooled features, optionally centred, at unit length, under the shared head row
    times a learned logit temperature: how ResNet-12 and EfficientNet-Lite end.

    With unit-length features, the first inner step from the shared row makes each class's row
    its mean feature direction (a cosine nearest-mean classifier), and the temperature alone sets
    how confident the logits are. ``centred`` subtracts a fixed ``feature_centre`` (the training
    classes' mean feature, :func:`~fewshot_serve.training.feature_centre.centre_on_training_classes`) before
    the L2 normalization (SimpleShot's CL2N, Wang et al. 2019): all of a backbone's features share a
    large common component, which on unit length without centring dominates the cosines between
    new classes. Subclasses give :meth:`pooled_features` and :meth:`folded_features`.
    """

    @classmethod
    def member_config_problems(cls, config: dict[str, Any]) -> list[str]:
        """As :meth:`config_problems`, for an ensemble member's config, which leaves
        :data:`ENSEMBLE_OWNED_KEYS` to the ensemble (:func:`~.ensemble.member_config`)."""
        return cls.config_problems(config)

    centred: bool = False
    #: the ``adapt_from`` at which the inner loop adapts the head row alone (the frozen part is the whole backbone)
    head_only_adapt_from: int

    def build_head(self, feature_dim: int, lr_steps: int, centred: bool, prototype_head: bool) -> None:
        """The head row, the temperature, the learned rates and the centre (call after the backbone)."""
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        # Multiplies the logits; learned by the outer loop only (the inner loop's step size is the lr).
        self.logit_scale = nn.Parameter(torch.ones(()))
        self.add_step_lrs(lr_steps)
        self.centred = centred
        self.prototype_head = prototype_head
        if centred:  # a constant of the file, never trained: a buffer, saved with the weights
            self.register_buffer("feature_centre", torch.zeros(feature_dim))

    def _is_fast_weight(self, name: str) -> bool:
        return name not in ("step_lrs", "logit_scale") and not self.in_frozen_part(name)

    def pooled_features(self, params: dict[str, Tensor], h: Tensor, n_ref: int | None = None) -> Tensor:
        """The adapted layers on the frozen part's output ``h``, pooled: the features before centring
        and unit length (what the feature centre is the mean of)."""
        raise NotImplementedError

    def head_input(self, params: dict[str, Tensor], h: Tensor, n_ref: int | None = None) -> Tensor:
        pooled = self.pooled_features(params, h, n_ref)
        return F.normalize(pooled - self.feature_centre if self.centred else pooled, dim=1)

    def head_logits(self, params: dict[str, Tensor], features: Tensor) -> Tensor:
        return params["logit_scale"] * F.linear(features, params["head.weight"], params["head.bias"])

    @torch.no_grad()
    def set_feature_centre(self, centre: Tensor) -> None:
        """Centre the features on ``centre`` (``[feature_dim]``) from now on; see the class's docstring."""
        if not self.centred:
            raise ValueError(f"this {type(self).__name__} was built without centred=True")
        if centre.shape != self.feature_centre.shape:
            raise ValueError(f"the centre must have shape {tuple(self.feature_centre.shape)}, "
                             f"got {tuple(centre.shape)}")
        self.feature_centre.copy_(centre)

    def unit_length(self) -> UnitLength:
        """The centring and L2 normalization of :meth:`head_input` as a plain layer (for folding)."""
        return UnitLength(self.feature_centre.clone() if self.centred else None)

    def folded_features(self, params: dict[str, Tensor], x_support: Tensor) -> nn.Sequential:
        """:meth:`head_input` of images as a plain eval-mode network (the body of :meth:`fold`)."""
        raise NotImplementedError

    @torch.no_grad()
    def fold(self, params: dict[str, Tensor], x_support: Tensor) -> nn.Module:
        """The adapted classifier as a plain eval-mode network, images -> logits (exports to ONNX).

        The result computes what :func:`~fewshot_serve.inner_loop.predict` does, one image at a
        time, with one convolution per layer (:meth:`folded_features`), then the adapted head.
        """
        folded = nn.Sequential(*self.folded_features(params, x_support), folded_head(params))
        return folded.eval().to(memory_format=torch.channels_last)


def folded_head(params: dict[str, Tensor]) -> nn.Linear:
    """The adapted head with the logit scale folded in: :meth:`PooledFeatureClassifier.head_logits` as one layer."""
    weight = params["head.weight"]
    head = skip_init(nn.Linear, weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
    head.weight.copy_(weight * params["logit_scale"])
    head.bias.copy_(params["head.bias"] * params["logit_scale"])
    return head


class UnitLength(nn.Module):
    """L2-normalizes each row, after subtracting ``centre`` if given (exports to ONNX as plain arithmetic)."""

    def __init__(self, centre: Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("centre", centre)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x if self.centre is None else x - self.centre, dim=1)
