"""Transforms of the data pipeline (spec §3.3, §2.8): ImageNet normalisation, the online resize + crop transforms,
and the photometric augmentation of the consistency regulariser."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ----------------------------------------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------------------------------------


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std shaped (3,1,1) on x's device/dtype, after checking x is (3,H,W) or (B,3,H,W)."""
    if x.dim() not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"expected a (3,H,W) or (B,3,H,W) image tensor, found shape {tuple(x.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return mean, std


def normalize(x01: torch.Tensor) -> torch.Tensor:
    """[0,1] RGB -> ImageNet-normalised: (x - mean) / std per channel."""
    mean, std = _stats(x01)
    return (x01 - mean) / std


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised -> [0,1] RGB (not clamped): x * std + mean."""
    mean, std = _stats(x)
    return x * std + mean


# ----------------------------------------------------------------------------------------------------------
# Online transforms (spec §3.3)
# ----------------------------------------------------------------------------------------------------------

_INTERPOLATIONS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR}  # PIL's BILINEAR is antialiased
# How a dataset's photos are resized for the backbone, in training *and* in prediction (`resize_image`): chosen here
# only. The registered datasets keep the official code's NEAREST; a folder of your own photos, often shrunk 10-20x,
# uses antialiased bilinear (NEAREST there keeps one pixel in 13 x 13 and the model sees aliasing).
RESAMPLING = {"folder": "bilinear"}


def resampling(dataset: str) -> str:
    """The image resampling of a dataset's training and of the prediction with a run trained on it (`RESAMPLING`)."""
    return RESAMPLING.get(dataset, "nearest")


def resize_image(image: Image.Image | np.ndarray, size: tuple[int, int], how: str) -> Image.Image:
    """A photo resized to size = (width, height) with `how` ("nearest" | "bilinear"): the resize of the model's input
    in the training transforms, and of a whole photo in prediction (`hpnb.evaluate.image_labels`, with
    `resampling(cfg.dataset)` of the run)."""
    if how not in _INTERPOLATIONS:
        raise ValueError(f"resampling must be one of {sorted(_INTERPOLATIONS)}, found {how!r}")
    return _to_pil_rgb(image).resize(tuple(size), _INTERPOLATIONS[how])


def resized_size(h: int, w: int, res: int) -> tuple[int, int]:
    """(new_h, new_w) with the shorter side = res and the longer one truncated, as torchvision Resize(int)."""
    if h <= w:
        return res, int(res * w / h)
    return int(res * h / w), res


def center_box(h: int, w: int, res: int) -> tuple[int, int]:
    """(top, left) of a res x res centre crop, rounded as torchvision CenterCrop."""
    if h < res or w < res:
        raise ValueError(f"cannot centre-crop {res}x{res} out of {h}x{w}")
    return int(round((h - res) / 2.0)), int(round((w - res) / 2.0))


def _to_pil_rgb(image: Image.Image | np.ndarray) -> Image.Image:
    """PIL RGB image from a PIL image or an HxWx3 uint8 array."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, found shape {arr.shape} dtype {arr.dtype}")
    return Image.fromarray(arr)


def _to_pil_label(label: Image.Image | np.ndarray) -> Image.Image:
    """PIL mode-"I" (int32) label, so -1 survives PIL's nearest resize."""
    arr = np.asarray(label)
    if arr.ndim != 2:
        raise ValueError(f"expected an HxW class-index label, found shape {arr.shape}")
    return Image.fromarray(arr.astype(np.int32))


class SegTransform:
    """Resize the shorter side to `res` then centre-crop res x res; image -> normalised tensor, label -> int64."""

    def __init__(self, res: int, image_interpolation: str = "nearest"):
        if int(res) != res or res < 1:
            raise ValueError(f"res must be a positive int, found {res!r}")
        if image_interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"image_interpolation must be one of {sorted(_INTERPOLATIONS)}, found {image_interpolation!r}"
            )
        self.res = int(res)
        self.image_interpolation = image_interpolation

    def __repr__(self) -> str:
        return f"SegTransform(res={self.res}, image_interpolation={self.image_interpolation!r})"

    def __call__(
        self, image: Image.Image | np.ndarray, label: Image.Image | np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        img, lab = _to_pil_rgb(image), _to_pil_label(label)
        if img.size != lab.size:
            raise ValueError(f"image and label sizes differ: {img.size} vs {lab.size} (W, H)")
        h, w = img.height, img.width
        new_h, new_w = resized_size(h, w, self.res)
        img = resize_image(img, (new_w, new_h), self.image_interpolation)
        lab = lab.resize((new_w, new_h), Image.NEAREST)  # labels: always nearest (the official images use it too)
        top, left = center_box(new_h, new_w, self.res)
        box = (left, top, left + self.res, top + self.res)
        img_hw3 = np.asarray(img.crop(box), dtype=np.uint8)
        lab_hw = np.asarray(lab.crop(box), dtype=np.int64)
        x01 = torch.from_numpy(img_hw3.copy()).permute(2, 0, 1).float() / 255.0
        return normalize(x01), torch.from_numpy(lab_hw.copy())


def train_transform(res: int = 224, image_interpolation: str = "nearest") -> SegTransform:
    """Training view (spec §3.3): shorter side -> res (224 officially), centre crop; no flip, no random crop."""
    return SegTransform(res, image_interpolation)


def val_transform(res: int = 320, image_interpolation: str = "nearest") -> SegTransform:
    """Validation view (spec §3.3): shorter side -> res (320 officially), centre crop."""
    return SegTransform(res, image_interpolation)


# ----------------------------------------------------------------------------------------------------------
# Photometric augmentation for the consistency regulariser (spec §2.8)
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhotometricParams:
    """One draw of ColorJitter(.3,.3,.3,.1) -> RandomGrayscale(.2) -> RandomApply(GaussianBlur(5), .5)."""

    order: tuple[int, ...]  # permutation of 0 brightness, 1 contrast, 2 saturation, 3 hue
    brightness: float
    contrast: float
    saturation: float
    hue: float
    grayscale: bool
    blur_sigma: float | None  # None = no blur


def sample_photometric_params(
    generator: torch.Generator | None = None,
    brightness: float = 0.3,
    contrast: float = 0.3,
    saturation: float = 0.3,
    hue: float = 0.1,
    p_gray: float = 0.2,
    p_blur: float = 0.5,
    sigma: tuple[float, float] = (0.1, 2.0),
) -> PhotometricParams:
    """Draw every random number of one augmentation from `generator` (a fixed number of draws: reproducible)."""
    order = tuple(int(i) for i in torch.randperm(4, generator=generator))
    u = torch.rand(7, generator=generator).tolist()
    factor = lambda s, v: 1 - s + 2 * s * v  # noqa: E731  uniform in [1-s, 1+s]
    return PhotometricParams(
        order=order,
        brightness=factor(brightness, u[0]),
        contrast=factor(contrast, u[1]),
        saturation=factor(saturation, u[2]),
        hue=-hue + 2 * hue * u[3],
        grayscale=u[4] < p_gray,
        blur_sigma=sigma[0] + (sigma[1] - sigma[0]) * u[6] if u[5] < p_blur else None,
    )


def apply_photometric(image: torch.Tensor, params: PhotometricParams) -> torch.Tensor:
    """Apply one drawn augmentation to a (3,H,W) float tensor with torchvision's functional ops."""
    import torchvision.transforms.functional as TF

    ops = (
        lambda x: TF.adjust_brightness(x, params.brightness),
        lambda x: TF.adjust_contrast(x, params.contrast),
        lambda x: TF.adjust_saturation(x, params.saturation),
        lambda x: TF.adjust_hue(x, params.hue),
    )
    for i in params.order:
        image = ops[i](image)
    if params.grayscale:
        image = TF.rgb_to_grayscale(image, num_output_channels=3)
    if params.blur_sigma is not None:
        image = TF.gaussian_blur(image, kernel_size=[5, 5], sigma=[params.blur_sigma, params.blur_sigma])
    return image


def photometric_augment(
    image: torch.Tensor, generator: torch.Generator | None = None, jitter_after_normalise: bool = True
) -> torch.Tensor:
    """img_aug of the regulariser R (spec §2.8) for (3,H,W) or (B,3,H,W) normalised images, independent draws per image.

    jitter_after_normalise=True is the official behaviour: the ops run on the ImageNet-normalised tensor, and
    torchvision's float colour ops clamp to [0,1] (brightness/contrast/saturation blend), so negative values
    are cut to 0 and the view is much harsher than jittering the photo. False: denormalise -> jitter in [0,1]
    -> renormalise (the gentle, "intended" augmentation).
    """
    if image.dim() == 4:
        return torch.stack([photometric_augment(x, generator, jitter_after_normalise) for x in image])
    _stats(image)  # shape check
    params = sample_photometric_params(generator)
    if jitter_after_normalise:
        return apply_photometric(image, params)
    x01 = denormalize(image).clamp(0.0, 1.0)
    return normalize(apply_photometric(x01, params))
