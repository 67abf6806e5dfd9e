"""Is a neighbour the same printed image as the query (a reprint, another scan), or only alike?

The global descriptor says "looks alike"; a researcher asking "where else was this ad printed?" needs
"is the same picture". Three tests, each needed because the one before it is fooled by something real:

1. Local features agree under one geometry. SIFT keypoints of both images (grey, levels stretched,
   at one working size, so another scan's resolution, tone and paper do not matter), matched with
   Lowe's ratio test, and a RANSAC similarity transform (rotation, uniform scale, shift: what a
   skewed re-scan or a reprint at another size does). Enough inliers means a shared part.
2. The shared part is the image, not a corner of it (`coverage`): the two images, aligned by that
   transform, overlap over most of the smaller one. A shared logo or border is not a reprint.
3. The content agrees everywhere they overlap (`agreement`): aligned, smoothed (halftone screens and
   JPEG blocks dissolve) and cut into cells, the textured cells correlate. Two advertisements of one
   template share frame, headline and layout, so they pass 1 and 2 with many inliers; their
   pictures and text differ, so the cells over those disagree.

The figures behind the rule (bench/reprints.py, docs/reprints.md): among the 20 global candidates of
2,400 re-scanned copies of 3,000 drawings, the rule accepts the original for 0.89 of the copies whose
original is there, and 0.3 % of the other candidates (nearly all of them the same drawing in another
colour, which a grey copy cannot tell apart); on advertisements of one template it says no (see the
bench). A check costs a few milliseconds once both images' features are known.

`ReprintChecker` checks a query's nearest candidates (features of candidates kept in a small cache);
`promote_reprints` puts the verified ones first in each period. Where the images come from
(thumbnails or the originals) is the caller's business (`collection.py`).
"""


from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps

from siamese.search import PeriodHits

WORKING_SIDE = 512
"""Images are compared with their longer side at most this (thumbnails are 300 px high): detail
beyond it adds keypoints of paper grain and screen dots, not of the picture."""
MIN_SIDE = 160
"""Smaller images are enlarged to this first (bicubic), so that a small copy still yields keypoints."""
CELL_SIDE = 192
"""The aligned images are compared at this many pixels on the longer side, smoothed, in CELLS x CELLS
cells: coarse enough that halftone screens, JPEG blocks and a pixel of misalignment do not count,
fine enough that another picture or other lines of text in the same frame do (bench/reprints.py: at
128 px, 2 of 1,560 advertisements of one template and 23 % of those with the same picture but other
text passed; at 192, none and 10 %; 96 px and 6 x 6 cells let 2.4 times as many different drawings
through)."""
CELLS = 8
PIXEL_DIFFERENCE = 48.0
DIFFERENT_PIXELS = 0.05
"""A cell disagrees when more than this fraction of its pixels differ by more than PIXEL_DIFFERENCE
grey levels (of 255), after the tone curve, beyond a pixel of misregistration (at CELL_SIDE)."""
COLOUR_SCALE = 0.25
"""Colour is kept at a quarter of the working size: a cell's mean colour is all that is compared."""
COLOUR_RESIDUAL = 4.0
"""An image has colour of its own when its Lab a/b vary by more than this (standard deviation) beyond
what its lightness explains: photographs and colour prints do (median 6-12 on drawings and emoji
flags), grey, toned (sepia) and 1-bit images do not (below 1), so they are compared in grey only."""
COLOUR_DIFFERENCE = 20.0
HUE_COSINE = 0.7
"""Two aligned cells of colour images disagree when one has colour (mean a/b chroma above
COLOUR_DIFFERENCE) and the other next to none (a quarter of it), or when both have and their hues
are more than 45 degrees apart: the black, blue or green stripe of one tricolour flag against
another's. Saturation alone never counts (gamma and contrast change it)."""
DEFAULT_CANDIDATES = 20
MAX_CANDIDATES = 100
LOOK_DEEPER = 5
"""How many batches of candidates a query among look-alikes may check (verify's `batch`): at most
LOOK_DEEPER times the candidates asked for, never more than MAX_CANDIDATES."""
CACHE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class ReprintRule:
    """When a candidate is the same printed image (see the module docstring for each test).

    min_inliers : RANSAC inliers of the similarity transform.
    min_coverage : the aligned images' overlap, as a fraction of the smaller one.
    cell_correlation, min_agreement : a textured cell agrees when the aligned, smoothed images
        correlate at least cell_correlation in it; min_agreement of the textured cells must agree.
    max_rotation : degrees the transform may turn: a re-scan is skewed a few degrees, a page is not
        printed on its side, and many series of drawings hold one motif turned by 90 degrees (allowing
        any turn accepted 3.9 times as many different drawings).
    ratio : Lowe's ratio test for a keypoint match.
    max_features : SIFT keypoints kept per image (the strongest).
    """

    min_inliers: int = 8
    min_coverage: float = 0.5
    cell_correlation: float = 0.8
    min_agreement: float = 0.95
    max_rotation: float = 20.0
    ratio: float = 0.8
    max_features: int = 800


DEFAULT_RULE = ReprintRule()


@dataclass(frozen=True)
class ImageFeatures:
    """One image prepared for checking: its working grey pixels and their SIFT keypoints."""

    grey: np.ndarray          # uint8, working size
    points: np.ndarray        # (n, 2) float32 keypoint positions in `grey`
    descriptors: np.ndarray   # (n, 128) uint8 (SIFT's values are whole numbers up to 255)
    colour: np.ndarray | None  # (h, w, 2) float32 Lab a/b at COLOUR_SCALE, None without colour of its own

    @property
    def nbytes(self) -> int:
        colour = 0 if self.colour is None else self.colour.nbytes
        return self.grey.nbytes + self.points.nbytes + self.descriptors.nbytes + colour


@dataclass(frozen=True)
class ReprintCheck:
    """The verdict on one candidate, with the figures it rests on."""

    reprint: bool
    inliers: int
    coverage: float
    agreement: float


NOT_MATCHED = ReprintCheck(False, 0, 0.0, 0.0)

_local = threading.local()  # OpenCV objects are not shared between request threads


def working_grey(image: Image.Image) -> np.ndarray:
    """The image as compared: grey, levels stretched (1 %), longer side at most WORKING_SIDE, shorter
    side at least MIN_SIDE where that keeps the longer within WORKING_SIDE."""
    grey = ImageOps.autocontrast(image.convert("L"), cutoff=1)
    width, height = grey.size
    scale = min(WORKING_SIDE / max(width, height), max(1.0, MIN_SIDE / min(width, height)))
    if scale != 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        method = Image.Resampling.BOX if scale < 1 else Image.Resampling.BICUBIC
        grey = grey.resize(size, method)
    return np.asarray(grey)


def own_colour(image: Image.Image, size: tuple[int, int]) -> np.ndarray | None:
    """The image's Lab a/b at `size`, or None when its colour is only a tone of its lightness
    (grey, sepia, 1-bit): see COLOUR_RESIDUAL."""
    if image.mode not in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
        return None
    rgb = np.asarray(image.convert("RGB").resize(size, Image.Resampling.BOX), dtype=np.float32) / 255
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)
    lightness = lab[..., 0].ravel()
    basis = np.stack([np.ones_like(lightness), lightness, lightness * lightness], axis=1)
    for channel in (1, 2):
        values = lab[..., channel].ravel()
        coefficients = np.linalg.lstsq(basis, values, rcond=None)[0]
        if float((values - basis @ coefficients).std()) > COLOUR_RESIDUAL:
            return np.ascontiguousarray(lab[..., 1:])
    return None


def image_features(image: Image.Image, rule: ReprintRule = DEFAULT_RULE) -> ImageFeatures:
    """What checking needs of one image (about 10 ms for a thumbnail)."""
    grey = working_grey(image)
    colour_size = (max(1, round(grey.shape[1] * COLOUR_SCALE)), max(1, round(grey.shape[0] * COLOUR_SCALE)))
    colour = own_colour(image, colour_size)
    detectors = _local.__dict__.setdefault("sift", {})
    sift = detectors.get(rule.max_features)
    if sift is None:
        sift = detectors[rule.max_features] = cv2.SIFT_create(nfeatures=rule.max_features)
    keypoints, descriptors = sift.detectAndCompute(grey, None)
    points = np.float32([keypoint.pt for keypoint in keypoints]).reshape(-1, 2)
    if descriptors is None:
        descriptors = np.zeros((0, 128), np.uint8)
    return ImageFeatures(grey, points, np.clip(descriptors, 0, 255).astype(np.uint8), colour)


def _matches(query: ImageFeatures, candidate: ImageFeatures, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    if len(query.descriptors) < 2 or len(candidate.descriptors) < 2:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    matcher = _local.__dict__.setdefault("matcher", cv2.BFMatcher(cv2.NORM_L2))
    pairs = matcher.knnMatch(query.descriptors.astype(np.float32), candidate.descriptors.astype(np.float32),
                             k=2)
    good = [pair[0] for pair in pairs if len(pair) == 2 and pair[0].distance < ratio * pair[1].distance]
    return (query.points[[m.queryIdx for m in good]].reshape(-1, 2),
            candidate.points[[m.trainIdx for m in good]].reshape(-1, 2))


def _smoothed(grey: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    small = cv2.resize(grey.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(small, (0, 0), 1.0)


def _tone_mapped(source: np.ndarray, target: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """`source` with the tone curve (a quadratic, least squares over `valid`) that best maps it onto
    `target`: another paper, ink, gamma or contrast is undone before pixels are compared."""
    x, y = source[valid], target[valid]
    if x.size < 16 or x.std() < 1:
        return source
    basis = np.stack([np.ones_like(x), x, x * x], axis=1)
    a, b, c = np.linalg.lstsq(basis, y, rcond=None)[0]
    return a + b * source + c * source * source


def _outside(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """How far each pixel of `values` lies outside the range of `reference` around it (3 x 3): a pixel
    of misregistration or blur costs nothing, ink that is not there costs its contrast."""
    kernel = np.ones((3, 3), np.uint8)
    low, high = cv2.erode(reference, kernel), cv2.dilate(reference, kernel)
    return np.maximum(np.maximum(low - values, values - high), 0)


def _colours_differ(ours: np.ndarray, theirs: np.ndarray) -> bool:
    """Whether two mean Lab a/b are other colours, not one colour under another tone curve (gamma and
    contrast move saturation, not hue): other hues, or colour against none."""
    chroma_ours, chroma_theirs = float(np.hypot(*ours)), float(np.hypot(*theirs))
    if max(chroma_ours, chroma_theirs) < COLOUR_DIFFERENCE:
        return False
    if min(chroma_ours, chroma_theirs) < COLOUR_DIFFERENCE / 4:
        return True
    cosine = float(ours @ theirs) / (chroma_ours * chroma_theirs)
    return cosine < HUE_COSINE


def cell_agreement(query: np.ndarray, aligned: np.ndarray, valid: np.ndarray,
                   rule: ReprintRule = DEFAULT_RULE,
                   colours: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """The fraction of cells, over the overlap (`valid`), in which the aligned images agree.

    A textured cell agrees when the images correlate in it (cell_correlation); any cell disagrees when
    more than DIFFERENT_PIXELS of it differ by more than PIXEL_DIFFERENCE grey levels after the tone
    curve (an emblem on one flag's white band, a face of another skin tone), or, where both images have
    colour of their own (`colours`: their aligned Lab a/b, any size), when its mean colours differ by
    other colours (_colours_differ). Blank paper in both says nothing and is not counted.
    """
    scale = min(1.0, CELL_SIDE / max(query.shape))
    size = (max(1, round(query.shape[1] * scale)), max(1, round(query.shape[0] * scale)))
    ours, theirs = _smoothed(query, size), _smoothed(aligned, size)
    inside = cv2.resize(valid.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.99
    theirs_toned = _tone_mapped(theirs, ours, inside).astype(np.float32)
    ours_toned = _tone_mapped(ours, theirs, inside).astype(np.float32)
    different = (np.maximum(_outside(ours, theirs_toned), _outside(theirs, ours_toned)) > PIXEL_DIFFERENCE)
    rows = np.linspace(0, size[1], CELLS + 1).round().astype(int)
    cols = np.linspace(0, size[0], CELLS + 1).round().astype(int)
    # the densest cell-sized window around each pixel: a difference across a cell border still counts
    window = (max(1, int(np.diff(cols).max())), max(1, int(np.diff(rows).max())))
    density = cv2.blur((different & inside).astype(np.float32), window, borderType=cv2.BORDER_CONSTANT)
    if colours is not None:
        colour_ours, colour_theirs = (cv2.resize(colour, size, interpolation=cv2.INTER_AREA)
                                      for colour in colours)
    counted = agreeing = 0
    for top, bottom in zip(rows[:-1], rows[1:], strict=True):
        for left, right in zip(cols[:-1], cols[1:], strict=True):
            mask = inside[top:bottom, left:right]
            if mask.size == 0 or mask.mean() < 0.6:
                continue
            a, b = ours[top:bottom, left:right][mask], theirs[top:bottom, left:right][mask]
            differs = density[top:bottom, left:right][mask].max() > DIFFERENT_PIXELS
            if colours is not None:
                mean_ours = colour_ours[top:bottom, left:right][mask].mean(axis=0)
                mean_theirs = colour_theirs[top:bottom, left:right][mask].mean(axis=0)
                differs |= _colours_differ(mean_ours, mean_theirs)
            textured = max(a.std(), b.std()) >= 8
            if not textured and not differs:
                continue
            counted += 1
            if differs or min(a.std(), b.std()) < 1:
                continue
            if not textured or float(np.corrcoef(a, b)[0, 1]) >= rule.cell_correlation:
                agreeing += 1
    return agreeing / counted if counted else 0.0


def check_reprint(query: ImageFeatures, candidate: ImageFeatures, rule: ReprintRule = DEFAULT_RULE
                  ) -> ReprintCheck:
    """Whether `candidate` shows the same printed image as `query` (the module's three tests)."""
    ours, theirs = _matches(query, candidate, rule.ratio)
    if len(ours) < max(3, rule.min_inliers):
        return ReprintCheck(False, 0, 0.0, 0.0)
    height, width = query.grey.shape
    transform, inlier_mask = cv2.estimateAffinePartial2D(
        theirs, ours, method=cv2.RANSAC, ransacReprojThreshold=max(3.0, max(height, width) / 100),
        maxIters=2000, confidence=0.995)
    if transform is None:
        return NOT_MATCHED
    inliers = int(inlier_mask.sum())
    scale = float(np.hypot(transform[0, 0], transform[1, 0]))
    rotation = abs(float(np.degrees(np.arctan2(transform[1, 0], transform[0, 0]))))
    if inliers < rule.min_inliers or not 1 / 8 < scale < 8 or rotation > rule.max_rotation:
        return ReprintCheck(False, inliers, 0.0, 0.0)
    aligned = cv2.warpAffine(candidate.grey, transform, (width, height), flags=cv2.INTER_AREA,
                             borderValue=255)
    valid = cv2.warpAffine(np.ones_like(candidate.grey), transform, (width, height),
                           flags=cv2.INTER_NEAREST, borderValue=0).astype(bool)
    coverage = min(1.0, float(valid.sum()) / min(query.grey.size, candidate.grey.size * scale * scale))
    if coverage < rule.min_coverage:
        return ReprintCheck(False, inliers, round(coverage, 3), 0.0)
    colours = None
    if query.colour is not None and candidate.colour is not None:
        # the same transform between the quarter-size colour grids (scale each side's own grid)
        to_query = np.diag([query.colour.shape[1] / width, query.colour.shape[0] / height])
        from_candidate = np.diag([candidate.grey.shape[1] / candidate.colour.shape[1],
                                  candidate.grey.shape[0] / candidate.colour.shape[0]])
        small = np.hstack([to_query @ transform[:, :2] @ from_candidate, to_query @ transform[:, 2:]])
        theirs = cv2.warpAffine(candidate.colour, small, (query.colour.shape[1], query.colour.shape[0]),
                                flags=cv2.INTER_LINEAR, borderValue=(0, 0))
        colours = (query.colour, theirs)
    agreement = cell_agreement(query.grey, aligned, valid, rule, colours)
    return ReprintCheck(agreement >= rule.min_agreement, inliers, round(coverage, 3), round(agreement, 3))


class FeatureCache:
    """The features of recently checked images, least recently used dropped first, at most
    `max_bytes` in all (a thumbnail's take about 200 kB). Thread-safe."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, ImageFeatures] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], Image.Image | None],
            rule: ReprintRule = DEFAULT_RULE) -> ImageFeatures | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        image = load()
        if image is None:
            return None
        features = image_features(image, rule)
        with self._lock:
            if key not in self._items and features.nbytes <= self.max_bytes:
                self._items[key] = features
                self._bytes += features.nbytes
                while self._bytes > self.max_bytes:
                    self._bytes -= self._items.popitem(last=False)[1].nbytes
        return features


@dataclass(frozen=True)
class Verification:
    """The checks of one query's candidates: verdicts by store row, and what was done."""

    checks: dict[int, ReprintCheck]
    images: str          # "thumbnails" or "originals"
    unavailable: int     # candidates without an image to check
    milliseconds: float
    note: str | None = None  # why nothing was checked, when nothing could be

    def summary(self, rule: ReprintRule = DEFAULT_RULE) -> dict:
        """What the answer says of the checking: checked, found, images, unavailable, ms, rule (and
        note, when nothing could be checked)."""
        summary = {"checked": len(self.checks), "found": sum(check.reprint for check in self.checks.values()),
                   "images": self.images, "unavailable": self.unavailable,
                   "ms": round(self.milliseconds, 1), "rule": asdict(rule)}
        if self.note:
            summary["note"] = self.note
        return summary


def verify(query: ImageFeatures, rows: Sequence[int], load: Callable[[int], ImageFeatures | None],
           images: str, rule: ReprintRule = DEFAULT_RULE, batch: int | None = None) -> Verification:
    """Check candidate rows (nearest first) against the query; `load(row)` gives a row's features
    (None: no image).

    `batch`: check `batch` rows, and the next `batch` only while at least half of the last ones were
    near misses (keypoints agree, content does not): the query belongs to a family of look-alikes (one
    template, one series), which crowds its own reprints further down than the first `batch`. None
    checks every row.
    """
    started = time.perf_counter()
    checks, unavailable = {}, 0
    batch = batch or len(rows)
    for start in range(0, len(rows), batch):
        near_misses = 0
        for row in rows[start:start + batch]:
            features = load(int(row))
            if features is None:
                unavailable += 1
                continue
            check = checks[int(row)] = check_reprint(query, features, rule)
            near_misses += not check.reprint and check.inliers >= rule.min_inliers
        if near_misses * 2 < batch:
            break
    return Verification(checks, images, unavailable, (time.perf_counter() - started) * 1000)


def promote_reprints(hits: list[PeriodHits], candidates: PeriodHits, verification: Verification,
                     years: np.ndarray, n: int) -> list[PeriodHits]:
    """Each period's hits with the verified reprints first (by distance), then its other hits, cut to n.

    A reprint among the candidates (the nearest of the whole collection) that a period's own search did
    not reach is put in that period too: "where was this printed again" is answered in every period.
    """
    reprint_rows = np.array([row for row in candidates.rows.tolist()
                             if verification.checks.get(row, NOT_MATCHED).reprint], dtype=np.int64)
    distance_of = dict(zip(candidates.rows.tolist(), candidates.distances.tolist(), strict=True))
    promoted = []
    for period_hits in hits:
        period = period_hits.period
        if period is None:
            mine = reprint_rows
        else:
            row_years = years[reprint_rows]
            mine = reprint_rows[(row_years >= period.start) & (row_years <= period.end)]
        if len(mine) == 0:
            promoted.append(PeriodHits(period, period_hits.rows[:n], period_hits.distances[:n]))
            continue
        others = ~np.isin(period_hits.rows, mine)
        rows = np.concatenate([mine, period_hits.rows[others]])[:n]
        distances = np.concatenate([np.array([distance_of[row] for row in mine.tolist()], dtype=np.float32),
                                    period_hits.distances[others].astype(np.float32)])[:n]
        promoted.append(PeriodHits(period, rows, distances))
    return promoted
