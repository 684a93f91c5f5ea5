"""Per-region skin colour sums: the numba kernel that runs on every frame, and its numpy reference.

The kernel makes one pass over the region mask's box and, for every labelled pixel that passes the skin
rule, adds its R, G, B to each region whose bit is set. Sums are exact integers, so the numpy reference
(which states the same rule with boolean masks, the obvious way) must agree bit for bit; the tests check it.

Skin rule (YCrCb, Chai & Ngan 1999, on the BT.601 full-range conversion OpenCV uses): 133 <= Cr <= 173 and
77 <= Cb <= 127, evaluated in integers (Y scaled by 1000, Cr/Cb offsets by 10^6) so kernel and reference
agree exactly. Saturated pixels (any channel >= 254) and pixels below video black (Y < 16) are counted in
`stats` for the quality checks, but they are *not* left out of the sums: a per-frame test decides for each
pixel anew, so pixels whose value hovers near a limit flicker in and out of the mean with the sensor noise
and with every slow change of light, and that flicker is noise in the trace. On compressed renders of a
bright face under a 3 % light drift (0.1-6 % of the face saturated over time) leaving out pixels at 250 and
above cost the face trace 0.5-2 dB against keeping them; a pixel that stays saturated is a constant and
costs nothing, and a fully white one fails the skin rule anyway (Cr = Cb = 128). The skin rule flickers
too, but on the real UBFC-rPPG videos it gains 0.3-0.7 dB by keeping hair, brows and background edges out.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numba import njit

from preprocess.pixels import Pixels

CR_MIN: Final = 133
CR_MAX: Final = 173
CB_MIN: Final = 77
CB_MAX: Final = 127
CLIP_LEVEL: Final = 254
DARK_LUMA: Final = 16
# Indices into the `stats` vector both implementations return (over all labelled pixels, skin or not).
STAT_PIXELS: Final = 0
STAT_LUMA_MILLI_SUM: Final = 1  # sum of 1000 * Y
STAT_CLIPPED: Final = 2
STAT_DARK: Final = 3
N_STATS: Final = 4


# Sub-pixel placement: the mask sits at whole pixels (x0, y0) and the image is sampled bilinearly at a
# further (fx, fy) / 256 px. Weights are integers summing to 2^16, so colour values are carried as exact
# integers scaled by 2^16 and the kernel and the reference agree bit for bit.
SUBPIXEL_STEPS: Final = 256
_ONE: Final = SUBPIXEL_STEPS * SUBPIXEL_STEPS


@njit(cache=True, nogil=True)
def _is_skin(
    b16: int | np.integer, g16: int | np.integer, r16: int | np.integer, use_skin_rule: bool
) -> bool:
    """The skin rule on colour values scaled by 2^16."""
    if not use_skin_rule:
        return True
    y_milli = 299 * r16 + 587 * g16 + 114 * b16
    cr_micro = 713 * (1000 * r16 - y_milli)  # (Cr - 128) * 10^6 * 2^16
    if cr_micro < (CR_MIN - 128) * 1_000_000 * _ONE or cr_micro > (CR_MAX - 128) * 1_000_000 * _ONE:
        return False
    cb_micro = 564 * (1000 * b16 - y_milli)  # (Cb - 128) * 10^6 * 2^16
    return (CB_MIN - 128) * 1_000_000 * _ONE <= cb_micro <= (CB_MAX - 128) * 1_000_000 * _ONE


@njit(cache=True, nogil=True)
def region_sums(
    image_bgr: np.ndarray,
    labels: np.ndarray,
    x0: int,
    y0: int,
    fx_q8: int,
    fy_q8: int,
    n_regions: int,
    use_skin_rule: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sums int64 [R, 3] in R, G, B order scaled by 2^16, skin counts int64 [R], stats int64 [4]).

    `labels` is a bit mask whose top-left sits at (x0 + fx_q8/256, y0 + fy_q8/256) in the frame: the
    fractional part is applied by bilinear sampling, so a mask drawn once follows the face's sub-pixel
    motion without the one-pixel jumps that would otherwise step the trace. Mask pixels whose samples
    fall outside the frame are skipped, which is how regions partly out of view keep their visible part.
    """
    height, width = image_bgr.shape[0], image_bgr.shape[1]
    sums = np.zeros((n_regions, 3), np.int64)
    counts = np.zeros(n_regions, np.int64)
    stats = np.zeros(N_STATS, np.int64)
    w00 = (SUBPIXEL_STEPS - fx_q8) * (SUBPIXEL_STEPS - fy_q8)
    w10 = fx_q8 * (SUBPIXEL_STEPS - fy_q8)
    w01 = (SUBPIXEL_STEPS - fx_q8) * fy_q8
    w11 = fx_q8 * fy_q8
    reach_x = 1 if fx_q8 > 0 else 0
    reach_y = 1 if fy_q8 > 0 else 0
    ly_start = max(0, -y0)
    ly_stop = min(labels.shape[0], height - y0 - reach_y)
    lx_start = max(0, -x0)
    lx_stop = min(labels.shape[1], width - x0 - reach_x)
    for ly in range(ly_start, ly_stop):
        row0 = image_bgr[y0 + ly]
        row1 = image_bgr[y0 + ly + reach_y]
        label_row = labels[ly]
        for lx in range(lx_start, lx_stop):
            label = label_row[lx]
            if label == 0:
                continue
            x = x0 + lx
            xr = x + reach_x
            b16 = w00 * np.int64(row0[x, 0]) + w10 * np.int64(row0[xr, 0])
            b16 += w01 * np.int64(row1[x, 0]) + w11 * np.int64(row1[xr, 0])
            g16 = w00 * np.int64(row0[x, 1]) + w10 * np.int64(row0[xr, 1])
            g16 += w01 * np.int64(row1[x, 1]) + w11 * np.int64(row1[xr, 1])
            r16 = w00 * np.int64(row0[x, 2]) + w10 * np.int64(row0[xr, 2])
            r16 += w01 * np.int64(row1[x, 2]) + w11 * np.int64(row1[xr, 2])
            y_milli = 299 * r16 + 587 * g16 + 114 * b16
            stats[STAT_PIXELS] += 1
            stats[STAT_LUMA_MILLI_SUM] += y_milli // _ONE
            if r16 >= CLIP_LEVEL * _ONE or g16 >= CLIP_LEVEL * _ONE or b16 >= CLIP_LEVEL * _ONE:
                stats[STAT_CLIPPED] += 1
            elif y_milli < DARK_LUMA * 1000 * _ONE:
                stats[STAT_DARK] += 1
            if not _is_skin(b16, g16, r16, use_skin_rule):
                continue
            for region in range(n_regions):
                if (label >> region) & 1:
                    sums[region, 0] += r16
                    sums[region, 1] += g16
                    sums[region, 2] += b16
                    counts[region] += 1
    return sums, counts, stats


def region_sums_in(
    pixels: Pixels,
    labels: np.ndarray,
    x0: int,
    y0: int,
    fx_q8: int,
    fy_q8: int,
    n_regions: int,
    use_skin_rule: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`region_sums` over a frame given as `Pixels`, converting only the mask's box to BGR.

    The crop spans the mask plus the one pixel bilinear sampling reaches, clamped to the frame; the
    kernel skips samples outside its image, so it stops exactly where the frame ends and the sums equal
    those over the whole converted frame (tested).
    """
    mask_h, mask_w = labels.shape
    cx0, cy0 = max(0, x0), max(0, y0)
    crop = pixels.crop_bgr(x0, y0, x0 + mask_w + 1, y0 + mask_h + 1)
    if crop.shape[0] == 0 or crop.shape[1] == 0:
        return (
            np.zeros((n_regions, 3), np.int64),
            np.zeros(n_regions, np.int64),
            np.zeros(N_STATS, np.int64),
        )
    return region_sums(crop, labels, x0 - cx0, y0 - cy0, fx_q8, fy_q8, n_regions, use_skin_rule)


def region_sums_reference(
    image_bgr: np.ndarray,
    labels: np.ndarray,
    x0: int,
    y0: int,
    fx_q8: int,
    fy_q8: int,
    n_regions: int,
    use_skin_rule: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same result as `region_sums`, written the straightforward numpy way (slow, obviously right)."""
    height, width = image_bgr.shape[:2]
    reach_x, reach_y = int(fx_q8 > 0), int(fy_q8 > 0)
    sums = np.zeros((n_regions, 3), np.int64)
    counts = np.zeros(n_regions, np.int64)
    stats = np.zeros(N_STATS, np.int64)
    fy0, fy1 = max(0, y0), min(height - reach_y, y0 + labels.shape[0])
    fx0, fx1 = max(0, x0), min(width - reach_x, x0 + labels.shape[1])
    if fy1 <= fy0 or fx1 <= fx0:
        return sums, counts, stats
    img = image_bgr.astype(np.int64)
    steps = SUBPIXEL_STEPS
    crop = (
        (steps - fx_q8) * (steps - fy_q8) * img[fy0:fy1, fx0:fx1]
        + fx_q8 * (steps - fy_q8) * img[fy0:fy1, fx0 + reach_x : fx1 + reach_x]
        + (steps - fx_q8) * fy_q8 * img[fy0 + reach_y : fy1 + reach_y, fx0:fx1]
        + fx_q8 * fy_q8 * img[fy0 + reach_y : fy1 + reach_y, fx0 + reach_x : fx1 + reach_x]
    )
    lab = labels[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
    b, g, r = crop[..., 0], crop[..., 1], crop[..., 2]
    y_milli = 299 * r + 587 * g + 114 * b
    labelled = lab != 0
    clipped = (r >= CLIP_LEVEL * _ONE) | (g >= CLIP_LEVEL * _ONE) | (b >= CLIP_LEVEL * _ONE)
    dark = ~clipped & (y_milli < DARK_LUMA * 1000 * _ONE)
    keep = labelled & skin_rule(b, g, r, _ONE) if use_skin_rule else labelled.copy()
    stats[STAT_PIXELS] = labelled.sum()
    stats[STAT_LUMA_MILLI_SUM] = (y_milli[labelled] // _ONE).sum()
    stats[STAT_CLIPPED] = (clipped & labelled).sum()
    stats[STAT_DARK] = (dark & labelled).sum()
    for region in range(n_regions):
        sel = keep & (((lab >> region) & 1) == 1)
        counts[region] = sel.sum()
        sums[region] = (r[sel].sum(), g[sel].sum(), b[sel].sum())
    return sums, counts, stats


def skin_rule(b: np.ndarray, g: np.ndarray, r: np.ndarray, scale: int) -> np.ndarray:
    """bool: the kernel's integer skin rule (`_is_skin`) on int64 channel arrays carrying `scale` × the
    colour value (1 for plain pixels, 2^16 for the reference's bilinear samples)."""
    y_milli = 299 * r + 587 * g + 114 * b
    cr_micro = 713 * (1000 * r - y_milli)
    cb_micro = 564 * (1000 * b - y_milli)
    return (
        (cr_micro >= (CR_MIN - 128) * 1_000_000 * scale)
        & (cr_micro <= (CR_MAX - 128) * 1_000_000 * scale)
        & (cb_micro >= (CB_MIN - 128) * 1_000_000 * scale)
        & (cb_micro <= (CB_MAX - 128) * 1_000_000 * scale)
    )


def skin_pixels(image_bgr: np.ndarray) -> np.ndarray:
    """bool [H, W]: the skin rule on every pixel of a BGR image (the same integer rule as the kernel's)."""
    img = image_bgr.astype(np.int64)
    return skin_rule(img[..., 0], img[..., 1], img[..., 2], 1)


def means_from_sums(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """float32 [R, 3] means (0..255), NaN where a region had no skin pixels (the tensor's 'absent')."""
    means = np.full(sums.shape, np.nan, np.float32)
    present = counts > 0
    means[present] = sums[present] / (counts[present, None] * float(_ONE))
    return means


def warm_up() -> None:
    """Compile (or load from the numba cache) before the first real frame, so it is not slow."""
    image = np.zeros((4, 4, 3), np.uint8)
    labels = np.ones((2, 2), np.uint8)
    region_sums(image, labels, 1, 1, 0, 0, 4, True)
    region_sums(image, labels, 1, 1, 3, 5, 1, False)
