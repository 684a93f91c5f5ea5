"""Per-region colour sums: the numba kernel that runs on every frame, and its numpy reference.

The kernel makes one pass over the region mask's box and adds every labelled pixel's R, G, B to each
region whose bit is set. Sums are exact integers, so the numpy reference (which states the same sums with
boolean masks, the obvious way) must agree bit for bit; the tests check it.

Which pixels are skin is decided once, when a mask is drawn (`skin_pixels`, applied by the placement),
not on every frame: a per-frame test decides for each pixel anew, so pixels whose value hovers near a
limit flicker in and out of the mean with the sensor noise and with every slow change of light, and that
flicker is noise in the trace. The skin rule is YCrCb (Chai & Ngan 1999, on the BT.601 full-range
conversion OpenCV uses): 133 <= Cr <= 173 and 77 <= Cb <= 127, evaluated in integers (Y scaled by 1000,
Cr/Cb offsets by 10^6). On the real UBFC-rPPG videos it gains 0.3-0.7 dB by keeping hair, brows and
background edges out. For the same reason saturated pixels (any channel >= 254) and pixels below video
black (Y < 16) are counted in `stats` for the quality checks but *not* left out of the sums: on compressed
renders of a bright face under a 3 % light drift (0.1-6 % of the face saturated over time) leaving out
pixels at 250 and above cost the face trace 0.5-2 dB against keeping them; a pixel that stays saturated
is a constant and costs nothing.
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
def region_sums(
    image_bgr: np.ndarray,
    labels: np.ndarray,
    x0: int,
    y0: int,
    fx_q8: int,
    fy_q8: int,
    n_regions: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sums int64 [R, 3] in R, G, B order scaled by 2^16, pixel counts int64 [R], stats int64 [4]).

    `labels` is a bit mask whose top-left sits at (x0 + fx_q8/256, y0 + fy_q8/256) in the frame: the
    fractional part is applied by bilinear sampling, so a mask drawn once follows the face's sub-pixel
    motion without the one-pixel jumps that would otherwise step the trace. Mask pixels whose samples
    fall outside the frame are skipped, which is how regions partly out of view keep their visible part.

    Why it is written this way: the sums are linear, so the bilinear weights can be applied once per run
    of equally labelled pixels instead of once per pixel. Along a run only the two rows' raw values are
    added; the right-hand taps of the run are the left-hand ones shifted by a pixel (its sum minus the
    first pixel plus the one after the last), and the run is added to its regions at its end. Labels
    change only at region borders, so runs are tens of pixels long and the per-pixel work is six adds and
    the quality test. `stats` judge the unshifted pixel (its luma, clipped, dark).
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
    clipped = np.int64(0)
    dark = np.int64(0)
    luma_milli = np.int64(0)
    for ly in range(ly_start, ly_stop):
        row0 = image_bgr[y0 + ly]
        row1 = image_bgr[y0 + ly + reach_y]
        label_row = labels[ly]
        lx = lx_start
        while lx < lx_stop:
            label = label_row[lx]
            if label == 0:
                lx += 1
                continue
            first = lx
            while lx < lx_stop and label_row[lx] == label:
                lx += 1
            xa, xb = x0 + first, x0 + lx
            # int32 while summing a run (at most a frame row of 255s), branch-free quality tests: a
            # sixth faster than int64 and if/elif here.
            b0 = g0 = r0 = b1 = g1 = r1 = np.int32(0)
            for x in range(xa, xb):
                b, g, r = np.int32(row0[x, 0]), np.int32(row0[x, 1]), np.int32(row0[x, 2])
                b0 += b
                g0 += g
                r0 += r
                b1 += np.int32(row1[x, 0])
                g1 += np.int32(row1[x, 1])
                r1 += np.int32(row1[x, 2])
                saturated = max(b, max(g, r)) >= CLIP_LEVEL
                clipped += saturated
                dark += (not saturated) and 299 * r + 587 * g + 114 * b < DARK_LUMA * 1000
            n = xb - xa
            # Widened before the weights: a weighted run sum overflows int32.
            wb0, wg0, wr0 = np.int64(b0), np.int64(g0), np.int64(r0)
            wb1, wg1, wr1 = np.int64(b1), np.int64(g1), np.int64(r1)
            luma_milli += 299 * wr0 + 587 * wg0 + 114 * wb0
            # The taps one pixel to the right: the run's sums shifted by one pixel.
            sb = w00 * wb0 + w01 * wb1
            sg = w00 * wg0 + w01 * wg1
            sr = w00 * wr0 + w01 * wr1
            if reach_x:
                sb += w10 * (wb0 - np.int64(row0[xa, 0]) + np.int64(row0[xb, 0]))
                sb += w11 * (wb1 - np.int64(row1[xa, 0]) + np.int64(row1[xb, 0]))
                sg += w10 * (wg0 - np.int64(row0[xa, 1]) + np.int64(row0[xb, 1]))
                sg += w11 * (wg1 - np.int64(row1[xa, 1]) + np.int64(row1[xb, 1]))
                sr += w10 * (wr0 - np.int64(row0[xa, 2]) + np.int64(row0[xb, 2]))
                sr += w11 * (wr1 - np.int64(row1[xa, 2]) + np.int64(row1[xb, 2]))
            stats[STAT_PIXELS] += n
            for region in range(n_regions):
                if (label >> region) & 1:
                    sums[region, 0] += sr
                    sums[region, 1] += sg
                    sums[region, 2] += sb
                    counts[region] += n
    stats[STAT_LUMA_MILLI_SUM] = luma_milli
    stats[STAT_CLIPPED] = clipped
    stats[STAT_DARK] = dark
    return sums, counts, stats


def region_sums_in(
    pixels: Pixels,
    labels: np.ndarray,
    x0: int,
    y0: int,
    fx_q8: int,
    fy_q8: int,
    n_regions: int,
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
    return region_sums(crop, labels, x0 - cx0, y0 - cy0, fx_q8, fy_q8, n_regions)


def region_sums_reference(
    image_bgr: np.ndarray,
    labels: np.ndarray,
    x0: int,
    y0: int,
    fx_q8: int,
    fy_q8: int,
    n_regions: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same result as `region_sums`, written the straightforward numpy way (slow, obviously right):
    every pixel bilinearly sampled, then masked sums."""
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
    pixel = img[fy0:fy1, fx0:fx1]
    sampled = (
        (steps - fx_q8) * (steps - fy_q8) * pixel
        + fx_q8 * (steps - fy_q8) * img[fy0:fy1, fx0 + reach_x : fx1 + reach_x]
        + (steps - fx_q8) * fy_q8 * img[fy0 + reach_y : fy1 + reach_y, fx0:fx1]
        + fx_q8 * fy_q8 * img[fy0 + reach_y : fy1 + reach_y, fx0 + reach_x : fx1 + reach_x]
    )
    lab = labels[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
    labelled = lab != 0
    b, g, r = pixel[..., 0], pixel[..., 1], pixel[..., 2]
    y_milli = 299 * r + 587 * g + 114 * b
    clipped = (r >= CLIP_LEVEL) | (g >= CLIP_LEVEL) | (b >= CLIP_LEVEL)
    dark = ~clipped & (y_milli < DARK_LUMA * 1000)
    stats[STAT_PIXELS] = labelled.sum()
    stats[STAT_LUMA_MILLI_SUM] = y_milli[labelled].sum()
    stats[STAT_CLIPPED] = (clipped & labelled).sum()
    stats[STAT_DARK] = (dark & labelled).sum()
    for region in range(n_regions):
        sel = ((lab >> region) & 1) == 1
        counts[region] = sel.sum()
        sums[region] = sampled[sel][:, ::-1].sum(axis=0)
    return sums, counts, stats


def skin_pixels(image_bgr: np.ndarray) -> np.ndarray:
    """bool [H, W]: the integer skin rule on every pixel of a BGR image (the placement's once-per-mask
    selection of which labelled pixels the kernel sums)."""
    img = image_bgr.astype(np.int64)
    b, g, r = img[..., 0], img[..., 1], img[..., 2]
    y_milli = 299 * r + 587 * g + 114 * b
    cr_micro = 713 * (1000 * r - y_milli)  # (Cr - 128) * 10^6
    cb_micro = 564 * (1000 * b - y_milli)  # (Cb - 128) * 10^6
    return (
        (cr_micro >= (CR_MIN - 128) * 1_000_000)
        & (cr_micro <= (CR_MAX - 128) * 1_000_000)
        & (cb_micro >= (CB_MIN - 128) * 1_000_000)
        & (cb_micro <= (CB_MAX - 128) * 1_000_000)
    )


def means_from_sums(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """float32 [..., R, 3] means (0..255) of sums [..., R, 3] over counts [..., R], NaN where a region had
    no pixels (the tensor's 'absent')."""
    means = np.full(sums.shape, np.nan, np.float32)
    present = counts > 0
    means[present] = sums[present] / (counts[present, None] * float(_ONE))
    return means


def warm_up() -> None:
    """Compile (or load from the numba cache) before the first real frame, so it is not slow.

    Both layouts the kernel meets: a whole image, and a strided view, which is what `region_sums_in`
    passes when the mask's box starts on an odd pixel of an I420 frame. Warming up only the first left
    the second to compile in the middle of the first measurement after an install (about 0.5 s: a
    stall a live capture drops frames over, and a quarter of a 720p replay's time).
    """
    image = np.zeros((4, 6, 3), np.uint8)
    labels = np.ones((2, 2), np.uint8)
    for view in (image, image[:, 1:5]):
        region_sums(view, labels, 1, 1, 0, 0, 4)
        region_sums(view, labels, 1, 1, 3, 5, 1)
