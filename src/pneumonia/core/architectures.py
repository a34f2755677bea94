"""The networks' architectures: torchvision's networks, adapted to 1 channel and one logit in one place.

Each :class:`Architecture` names the torchvision builder and the places the rest
of the project needs to reach into the network: the stem convolution (made
1-channel; ImageNet's RGB filters summed), the final linear layer (one logit),
the last feature map with what lies between it and the logit, which the class
activation maps (:mod:`pneumonia.localization.cam`) weight by the head's
weights, and the stride-8, -16 and -32 feature maps the detector
(:mod:`pneumonia.detection.network`) reads. ``cell_offset`` says where the last
map's cell ``j`` sits on the input: pixel ``stride * j + cell_offset`` is its
receptive field's centre (see each entry's derivation). torchvision is imported
only when a network is built, so reading the names (params checking) stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pneumonia.core.errors import PneumoniaError

if TYPE_CHECKING:  # torch is imported where a network is built: params checking reads only the names
    import torch
    from torch import nn


@dataclass(frozen=True)
class Architecture:
    name: str  # torchvision.models' builder of the same name
    stem: str  # dotted path of the first convolution (3 -> 1 input channel)
    head: str  # dotted path of the nn.Linear giving the logit
    features: str  # dotted path of the module whose output is the last feature map (N x K x S/32 x S/32)
    # Dotted paths of the modules giving the stride-8, -16 and -32 maps the detector reads, children of one
    # module that applies its children in order (the network itself, or its ``features``), and their channels.
    pyramid: tuple[str, str, str]
    pyramid_channels: tuple[int, int, int]
    features_relu: bool = False  # the network applies a functional ReLU to that output before pooling (DenseNet)
    head_norm: str | None = None  # a LayerNorm2d between the pooling and the head (ConvNeXt)
    # Input pixel (of the S x S input, pixel k covering [k, k+1)) on which feature cell 0 is centred:
    # a stride-s op with kernel k and padding p puts output o at s*o - p + (k-1)/2 of its input.
    cell_offset: float = 0.5
    stride: int = 32  # input pixels per feature cell


_REGISTRY = {
    spec.name: spec
    for spec in (
        # conv1 7/2/3, maxpool 3/2/1 and the 3x3/1x1 stride-2 convs of layers 2-4 all put o at 2o.
        Architecture("resnet18", stem="conv1", head="fc", features="layer4",
                     pyramid=("layer2", "layer3", "layer4"), pyramid_channels=(128, 256, 512)),
        Architecture("resnet34", stem="conv1", head="fc", features="layer4",
                     pyramid=("layer2", "layer3", "layer4"), pyramid_channels=(128, 256, 512)),
        Architecture("resnet50", stem="conv1", head="fc", features="layer4",
                     pyramid=("layer2", "layer3", "layer4"), pyramid_channels=(512, 1024, 2048)),
        # conv0 7/2/3 and pool0 3/2/1 put o at 2o; the three transitions' 2x2 average pools at 2o + 0.5:
        # 4 * (2 * (2 * (2j + 0.5) + 0.5) + 0.5) = 32j + 14, centre + 0.5.
        Architecture("densenet121", stem="features.conv0", head="classifier", features="features",
                     pyramid=("features.denseblock2", "features.denseblock3", "features.norm5"),
                     pyramid_channels=(512, 1024, 1024), features_relu=True, cell_offset=14.5),
        # The stem 3x3/2/1 and the depthwise 3x3 or 5x5 stride-2 convs (padding (k-1)/2) put o at 2o.
        # Stages 3, 5 and 8 end at strides 8, 16 and 32 (stages 4 and 6 downsample, 5 and 7 keep the size).
        Architecture("efficientnet_b0", stem="features.0.0", head="classifier.1", features="features",
                     pyramid=("features.3", "features.5", "features.8"), pyramid_channels=(40, 112, 1280)),
        # Patchify 4x4/4/0 puts o at 4o + 1.5, the three 2x2/2/0 downsamplings at 2o + 0.5:
        # 4 * (2 * (2 * (2j + 0.5) + 0.5) + 0.5) + 1.5 = 32j + 15.5, centre + 0.5.
        # Even children of features downsample, odd ones are the stages at strides 4, 8, 16 and 32.
        Architecture("convnext_tiny", stem="features.0.0", head="classifier.2", features="features",
                     pyramid=("features.3", "features.5", "features.7"), pyramid_channels=(192, 384, 768),
                     head_norm="classifier.0", cell_offset=16.0),
    )
}
ARCHITECTURES = tuple(_REGISTRY)
ArchitectureName = Literal[ARCHITECTURES]  # the type of a setting or header key that names one
# The detector's merges of the backbone's stride 8/16/32 features (pneumonia.detection.network builds them):
# the small top-down merge, or torchvision's feature pyramid network. Here, beside the backbones, so that
# params checking reads the names without importing torch.
NECKS = ("topdown", "fpn")
INITS = ("scratch", "imagenet")  # or a path to a state dict


def architecture(name: str) -> Architecture:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise PneumoniaError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}") from None


def build_network(arch: str = "resnet18", init: str = "scratch", *, param: str = "train.init") -> nn.Module:
    """``arch`` taking 1 x S x S standardized images and returning N x 1 logits, initialised by ``init``.

    ``scratch``: torchvision's random initialisation, the 1-channel stem PyTorch's
    default (the reference); ``imagenet``: torchvision's default ImageNet weights
    (downloaded by torchvision to the torch cache once), the stem's RGB filters
    summed to one channel, a fresh one-logit head; a path: a state dict (see
    :func:`load_init_state`). ``param`` names, in errors, the parameter ``init`` came from.
    """
    import torch
    import torchvision.models
    from torch import nn

    spec = architecture(arch)
    weights = _imagenet_weights(spec, param) if init == "imagenet" else None
    net = torchvision.models.get_model(arch, weights=weights, **({} if weights else {"num_classes": 1}))
    stem = net.get_submodule(spec.stem)
    one_channel = nn.Conv2d(1, stem.out_channels, stem.kernel_size, stem.stride, stem.padding,
                            bias=stem.bias is not None)
    if weights is not None:
        with torch.no_grad():
            one_channel.weight.copy_(stem.weight.sum(dim=1, keepdim=True))
            if stem.bias is not None:
                one_channel.bias.copy_(stem.bias)
        head = net.get_submodule(spec.head)
        net.set_submodule(spec.head, nn.Linear(head.in_features, 1))
    net.set_submodule(spec.stem, one_channel)
    if init not in INITS:
        load_init_state(net, spec, Path(init), param=param)
    return net


def _imagenet_weights(spec: Architecture, param: str):
    """torchvision's default weights of ``spec``, downloaded into the torch cache now (one line if that fails)."""
    import torch
    import torchvision.models

    weights = torchvision.models.get_model_weights(spec.name).DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.exists():
        try:
            weights.get_state_dict(progress=False, check_hash=True)
        except Exception as exc:  # URLError, HTTP errors, a hash mismatch: all mean "not available here"
            raise PneumoniaError(
                f"{param} imagenet: could not download {weights.url} ({exc.__class__.__name__}: {exc}); "
                f"with no internet, copy that file to {cached}, or use {param} scratch"
            ) from None
    return weights


def load_init_state(net: nn.Module, spec: Architecture, path: Path, *, param: str = "train.init") -> None:
    """Weights from ``path`` into ``net``: a state dict saved by ``torch.save`` (a Lightning checkpoint's too).

    Keys are those of this project's network (a Lightning checkpoint's ``network.``
    prefix is dropped); a 3-channel stem is summed to one channel; a head of
    another shape (an ImageNet or other-task model) is left freshly initialised.
    Anything else that does not fit is one line naming the file (and ``param``, the parameter that named it).
    """
    import torch

    if not path.is_file():
        raise PneumoniaError(f"{param} {path}: no such file; use scratch, imagenet or the path of a state dict")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PneumoniaError(f"{param} {path}: not a PyTorch state dict ({exc.__class__.__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = {k.removeprefix("network."): v for k, v in state["state_dict"].items()}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PneumoniaError(f"{param} {path}: not a state dict (a mapping of names to tensors)")
    state = dict(state)
    expected = net.state_dict()
    stem_key = spec.stem + ".weight"
    if stem_key in state and state[stem_key].ndim == 4 and state[stem_key].shape[1] == 3:
        state[stem_key] = state[stem_key].sum(dim=1, keepdim=True)
    for key in (spec.head + ".weight", spec.head + ".bias"):
        if key in state and state[key].shape != expected[key].shape:
            del state[key]
    unfit = [k for k in state if k not in expected or state[k].shape != expected[k].shape]
    missing = [k for k in expected if k not in state and not k.startswith(spec.head + ".")]
    if unfit or missing:
        example = (unfit or missing)[0]
        raise PneumoniaError(
            f"{param} {path}: does not fit a {spec.name} ({len(unfit)} unexpected or reshaped, "
            f"{len(missing)} missing tensors, e.g. {example}); save the state dict of the same architecture"
        )
    net.load_state_dict(state, strict=False)


def feature_evidence(network: nn.Module, arch: str, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N,) and the signed per-cell evidence (N, h, w) whose mean plus :func:`head_offset` is the logit.

    One forward pass; a hook keeps the last feature map ``F`` (N x K x h x w).
    The logit is ``w . g(mean_cells(F)) + b`` with ``g`` linear given the image
    (identity; DenseNet's ReLU comes before the pooling and so applies per cell;
    ConvNeXt's LayerNorm normalises the pooled vector, whose mean and variance are
    constants of the image), so the evidence ``w . g(F_cell)`` without the
    constant terms is Zhou et al.'s class activation map for every architecture.
    """
    import torch

    spec = architecture(arch)
    captured: list[torch.Tensor] = []
    handle = network.get_submodule(spec.features).register_forward_hook(
        lambda module, inputs, output: captured.append(output)
    )
    try:
        logits = network(images)[:, 0].float()
    finally:
        handle.remove()
    features = captured[0].float()
    if spec.features_relu:
        features = torch.relu(features)
    weights = network.get_submodule(spec.head).weight[0].float()
    if spec.head_norm is not None:
        norm = network.get_submodule(spec.head_norm)
        pooled = features.mean(dim=(2, 3), keepdim=True)
        mean = pooled.mean(dim=1, keepdim=True)
        var = pooled.var(dim=1, unbiased=False, keepdim=True)
        features = (features - mean) / torch.sqrt(var + norm.eps)
        weights = weights * norm.weight.float()
    return logits, torch.einsum("k,nkhw->nhw", weights, features)


def head_offset(network: nn.Module, arch: str) -> float:
    """The logit's constant part: the head's bias (plus, for ConvNeXt, the norm's shift times the weights)."""
    spec = architecture(arch)
    head = network.get_submodule(spec.head)
    offset = float(head.bias[0].detach())
    if spec.head_norm is not None:
        offset += float(head.weight[0].detach() @ network.get_submodule(spec.head_norm).bias.detach())
    return offset

