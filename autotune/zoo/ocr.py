"""Labeled OCR data made in code for the PP-OCR models in the rapidocr-onnxruntime wheel.

Text lines are rendered with PIL and matplotlib's DejaVu fonts, then preprocessed exactly as
rapidocr does (BGR pixels, (x/255 - 0.5)/0.5, its resize and padding), so the FP32 models read
them as they read real crops. Every generator is seeded: the same seed gives the same bytes.
Only the models' files are used; rapidocr itself is never imported.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from autotune.errors import UsageError

Rng = np.random.Generator
Box = tuple[int, int, int, int]  # left, top, right, bottom

HEIGHT = 48  # the recognizer's and the classifier's input height
MAX_CHARS = 30
MAX_LINES = 12  # per detection page; the boxes array always has this many rows
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
         "DejaVuSans-BoldOblique.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
         "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf", "DejaVuSansMono.ttf",
         "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf")

WORDS = """
the and for you with this that from your our all new open closed today now free sale off more
less best good great fresh hot cold ice cream milk bread butter cheese eggs coffee tea water
juice apple banana orange lemon tomato potato onion rice pasta sugar salt pepper oil soup salad
pizza burger chicken beef pork fish fruit cake cookie chocolate candy snack lunch dinner
breakfast menu order table kitchen store shop market bank hotel room floor door exit entrance
push pull stop wait walk left right up down north south east west street road avenue lane park
station bus train ticket gate platform airport flight parking car taxi bike only no yes please
thank welcome hello sorry help info call phone email mail box post office school class book
page paper pen note card cash change total price tax tip due paid receipt item qty amount sub
balance credit debit visa account date time day week month year morning night monday tuesday
wednesday thursday friday saturday sunday january february march april may june july august
september october november december hours service customer staff private public toilet men
women baby kids family adult child senior student member guest visitor number size small medium
large extra light dark red blue green black white yellow brown grey pink purple gold silver
home garden house city town center centre main first second third last next back front side top
bottom inside outside keep clear caution danger warning fire alarm emergency safety first aid
water wash hands clean wet dry fragile handle care this way use by best before expires made in
net weight contents serving per pack bottle bag cup glass plate bowl spoon fork knife sauce
fries wine beer drinks bar cafe restaurant bakery pharmacy grocery deli butcher meat vegan
organic natural local daily special offer deal discount save buy get one two three four five
ten half full empty low high fast slow easy quick big little old young happy nice fine love
friend people world life work job team office meeting event party music movie show film game
sport ball club gym pool beach lake river hill forest trail map guide tour art museum library
church hall court police doctor nurse hospital clinic dental health medicine test lab report
letter dear from sincerely best regards name address city state zip code country
""".split()

CASES: tuple[Callable[[str], str], ...] = (str.lower, str.capitalize, str.upper)


def _word(rng: Rng) -> str:
    return CASES[rng.choice(3, p=[0.5, 0.35, 0.15])](WORDS[rng.integers(len(WORDS))])


def _price(rng: Rng) -> str:
    value = f"{rng.integers(0, 200)}.{rng.integers(0, 100):02d}"
    return "$" + value if rng.random() < 0.6 else value


def _date(rng: Rng) -> str:
    d, m, y = rng.integers(1, 29), rng.integers(1, 13), rng.integers(1990, 2031)
    forms = (f"{d:02d}/{m:02d}/{y}", f"{y}-{m:02d}-{d:02d}", f"{d}.{m}.{y % 100:02d}",
             f"{m}/{d}/{y % 100:02d}")
    return forms[rng.integers(len(forms))]


def _time(rng: Rng) -> str:
    h, m = rng.integers(0, 24), rng.integers(0, 60)
    forms = (f"{h:02d}:{m:02d}", f"{h % 12 or 12}:{m:02d} {'am' if h < 12 else 'pm'}",
             f"{h % 12 or 12}:{m:02d}{'AM' if h < 12 else 'PM'}")
    return forms[rng.integers(len(forms))]


def _quantity(rng: Rng) -> str:
    n = rng.integers(1, 1000)
    forms = (f"{n}g", f"{n % 10}.{rng.integers(10)}L", f"{n % 20 + 1} kg", f"{n % 100}%",
             f"x{n % 9 + 1}", f"#{rng.integers(100, 99999)}", f"No. {n}",
             f"{rng.integers(200, 999)}-{rng.integers(0, 10000):04d}", f"{n % 40 + 1}°C")
    return forms[rng.integers(len(forms))]


def _number(rng: Rng) -> str:
    return (_price, _date, _time, _quantity)[rng.integers(4)](rng)


def _words_line(rng: Rng) -> str:
    words = [_word(rng) for _ in range(rng.integers(1, 7))]
    if len(words) > 2 and rng.random() < 0.2:
        words[rng.integers(len(words) - 1)] += ","
    if len(words) > 1 and rng.random() < 0.1:
        words.insert(rng.integers(1, len(words)), "&-/"[rng.integers(3)])
    line = " ".join(words)
    if rng.random() < 0.25:
        line += ".!?:"[rng.integers(4)]
    if rng.random() < 0.05:
        line = f"({line})" if rng.random() < 0.5 else f'"{line}"'
    return line


def _receipt_line(rng: Rng) -> str:
    item = " ".join(_word(rng) for _ in range(rng.integers(1, 4)))
    prefix = f"{rng.integers(2, 10)}x " if rng.random() < 0.2 else ""
    return f"{prefix}{item} {_price(rng)}"


def _label_line(rng: Rng) -> str:
    key = _word(rng).capitalize()
    sep = ": " if rng.random() < 0.7 else " "
    value = _number(rng) if rng.random() < 0.8 else _word(rng)
    if rng.random() < 0.15:
        return f"{key} {_time(rng)} - {_time(rng)}"
    return key + sep + value


def _line(rng: Rng) -> str:
    """One line a user might OCR off a receipt, a sign or a label, at most MAX_CHARS long."""
    makers = (_words_line, _receipt_line, _label_line, _number)
    while True:
        line = makers[rng.choice(4, p=[0.45, 0.2, 0.2, 0.15])](rng)
        if 0 < len(line) <= MAX_CHARS:
            return line


def text_lines(count: int, seed: int) -> list[str]:
    """`count` seeded lines of 1-6 words, prices, dates, times and punctuation (ASCII and °;
    every character is in the PP-OCRv4 recognizer's set)."""
    rng = np.random.default_rng(seed)
    return [_line(rng) for _ in range(count)]


# --- the recognizer's classes and its output ---------------------------------------------------

@lru_cache(maxsize=4)
def _charset(path: str) -> tuple[str, ...]:
    import onnx

    meta = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    if "character" not in meta:
        raise UsageError(f"{path} has no `character` metadata; expected a PP-OCR recognizer")
    # rapidocr's CTCLabelDecode: blank first, the metadata's lines (str.splitlines), then a space
    return ("blank", *meta["character"].splitlines(), " ")


def charset(model_path: str | Path) -> list[str]:
    """The recognizer's CTC classes: index 0 the blank, then the model's `character` metadata
    one per line, then a space (6625 for PP-OCRv4)."""
    return list(_charset(str(model_path)))


def ctc_decode(probs: np.ndarray, classes: list[str]) -> list[str]:
    """Greedy CTC for probs of shape (batch, steps, classes): the argmax of each step, repeats
    collapsed, blanks (class 0) dropped."""
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[2] != len(classes):
        raise UsageError(f"expected probs of shape (batch, steps, {len(classes)}), "
                         f"got {probs.shape}")
    best = probs.argmax(axis=2)
    keep = np.ones_like(best, dtype=bool)
    keep[:, 1:] = best[:, 1:] != best[:, :-1]
    keep &= best != 0
    return ["".join(classes[i] for i in row[k]) for row, k in zip(best, keep)]


# --- rendering ---------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    import matplotlib

    # the basic layout: no ligatures ("ff" stays two letters) and the same glyphs with or
    # without libraqm installed
    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts/ttf" / name), size,
                              layout_engine=ImageFont.Layout.BASIC)


def _random_font(rng: Rng, low: int, high: int) -> ImageFont.FreeTypeFont:
    return _font(FONTS[rng.integers(len(FONTS))], int(rng.integers(low, high + 1)))


def _colors(rng: Rng) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(light background, dark ink), each a grey with a slight tint."""
    bg, ink = rng.uniform(185, 250), rng.uniform(0, 90)
    tint = rng.normal(0, 6, 3)
    return (tuple(int(np.clip(bg + t, 0, 255)) for t in tint),
            tuple(int(np.clip(ink + 2 * t, 0, 255)) for t in tint))


def _finish(img: Image.Image, rng: Rng) -> np.ndarray:
    """Light blur sometimes, Gaussian noise always; returns BGR uint8, the order rapidocr's
    image loader hands to every model."""
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))
    sigma = np.float32(rng.uniform(0, 6))
    pixels = np.asarray(img, np.float32) + sigma * rng.standard_normal((img.height, img.width, 3),
                                                                      np.float32)
    return np.ascontiguousarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)[:, :, ::-1])


def _line_extent(text: str, font: ImageFont.FreeTypeFont) -> tuple[int, int, int, int]:
    """The ink box of `text` drawn at (0, 0), stretched to span at least cap height to
    baseline, as a detector's box of a line does ("ace" is as tall as "Ace")."""
    left, top, right, bottom = font.getbbox(text)
    cap_top, baseline = font.getbbox("H")[1], font.getbbox("H")[3]
    return left, min(top, cap_top), right, max(bottom, baseline)


def _crop_layout(text: str, rng: Rng) -> tuple[ImageFont.FreeTypeFont, Box, tuple[int, int]]:
    """A font and the margins (left, top, right, bottom) of a detector-like crop; its size."""
    font = _random_font(rng, 14, 44)
    left, top, right, bottom = _line_extent(text, font)
    size = font.size
    # side margins of 0.3 font sizes or more read as leading/trailing spaces: keep them tight,
    # as a detector's boxes are
    margins = (int(rng.uniform(0.02, 0.2) * size), int(rng.uniform(0.08, 0.3) * size),
               int(rng.uniform(0.02, 0.2) * size), int(rng.uniform(0.08, 0.3) * size))
    shape = (right - left + margins[0] + margins[2], bottom - top + margins[1] + margins[3])
    return font, margins, shape


def _fits(shape: tuple[int, int], width: int) -> bool:
    return math.ceil(HEIGHT * shape[0] / shape[1]) <= width


def _render_crop(text: str, font: ImageFont.FreeTypeFont, margins: Box,
                 shape: tuple[int, int], rng: Rng) -> np.ndarray:
    left, top, _, _ = _line_extent(text, font)
    bg, ink = _colors(rng)
    img = Image.new("RGB", shape, bg)
    ImageDraw.Draw(img).text((margins[0] - left, margins[1] - top), text, fill=ink, font=font)
    return _finish(img, rng)


def _fitting_crop(rng: Rng, width: int) -> tuple[str, np.ndarray]:
    """A rendered line whose crop, resized to height 48, is at most `width` wide: lines that do
    not fit are replaced by fresh ones, and after many misses cut down word by word."""
    text = _line(rng)
    for attempt in range(60):
        font, margins, shape = _crop_layout(text, rng)
        if _fits(shape, width):
            return text, _render_crop(text, font, margins, shape, rng)
        text = _line(rng) if attempt < 40 or " " not in text else text.rsplit(" ", 1)[0]
    raise UsageError(f"no text line fits a {HEIGHT}x{width} input; use a wider one")


# --- rapidocr's preprocessing ------------------------------------------------------------------

def _resize_linear(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """cv2.resize(img, (width, height)) with INTER_LINEAR: half-pixel centres, edges clamped,
    no antialiasing, rounded back to uint8."""
    def axis(dst: int, src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = (np.arange(dst) + 0.5) * (src / dst) - 0.5
        lo = np.floor(pos).astype(np.int64)
        frac = pos - lo
        frac[lo < 0], lo[lo < 0] = 0.0, 0
        frac[lo >= src - 1], lo[lo >= src - 1] = 0.0, src - 1
        return lo, np.minimum(lo + 1, src - 1), frac.astype(np.float32)

    y0, y1, fy = axis(height, img.shape[0])
    x0, x1, fx = axis(width, img.shape[1])
    src = img.astype(np.float32)
    rows = src[y0] * (1 - fy)[:, None, None] + src[y1] * fy[:, None, None]
    out = rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _normalize(img: np.ndarray) -> np.ndarray:
    """HWC uint8 -> CHW float32, (x/255 - 0.5)/0.5, as rapidocr's rec, cls and det all do."""
    return ((img.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)


def resize_norm_img(img: np.ndarray, width: int) -> np.ndarray:
    """rapidocr's recognizer/classifier input for one BGR crop: height 48, width
    ceil(48 * w / h) capped at `width` (wider crops are squashed), right-padded with 0."""
    h, w = img.shape[:2]
    resized_w = min(width, math.ceil(HEIGHT * w / h))
    out = np.zeros((3, HEIGHT, width), np.float32)
    out[:, :, :resized_w] = _normalize(_resize_linear(img, resized_w, HEIGHT))
    return out


def rec_data(count: int, seed: int, width: int = 320) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 (count, 3, 48, width), labels str (count,)) for the recognizer: dark
    text on light backgrounds in varied fonts, sizes, margins, colours and noise, each line
    fully visible at `width`."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 3, HEIGHT, width), np.float32)
    labels = []
    for i in range(count):
        text, crop = _fitting_crop(rng, width)
        images[i] = resize_norm_img(crop, width)
        labels.append(text)
    return images, np.array(labels, dtype=str)


def cls_data(count: int, seed: int, width: int = 192,
             line_width: int = 320) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 (count, 3, 48, width), labels int64) for the direction classifier: the
    recognizer's kind of lines (fitting `line_width`), half turned 180 degrees (label 1, rapidocr's
    label_list ['0', '180']). Crops wider than `width` are squashed, as rapidocr's classifier
    does with long lines."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % 2).astype(np.int64)
    images = np.zeros((count, 3, HEIGHT, width), np.float32)
    for i, turned in enumerate(labels):
        crop = _fitting_crop(rng, line_width)[1]
        images[i] = resize_norm_img(crop[::-1, ::-1] if turned else crop, width)
    return images, labels


# --- detection pages ---------------------------------------------------------------------------

def _background(rng: Rng, size: int) -> np.ndarray:
    """A light page: a base colour, a faint linear gradient and sometimes a faint blotchy
    texture, RGB float32."""
    base = rng.uniform(200, 250) + rng.normal(0, 6, 3)
    angle, strength = rng.uniform(0, 2 * np.pi), rng.uniform(0, 25)
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    grad = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
    page = base[None, None, :] + (strength * grad)[:, :, None]
    if rng.random() < 0.5:
        cells = int(rng.integers(4, 17))
        coarse = rng.normal(0, rng.uniform(2, 8), (cells, cells)).astype(np.float32)
        smooth = Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR)
        page += np.asarray(smooth, np.float32)[:, :, None]
    return np.clip(page, 0, 255).astype(np.float32)


def _place(box_wh: tuple[int, int], taken: list[Box], gap: tuple[int, int],
           size: int, rng: Rng) -> tuple[int, int] | None:
    """A top-left corner for a w x h box inside the page, (x, y) `gap` away from every taken
    box."""
    (w, h), (gx, gy) = box_wh, gap
    margin = 4
    if w + 2 * margin > size or h + 2 * margin > size:
        return None
    for _ in range(40):
        x = int(rng.integers(margin, size - margin - w + 1))
        y = int(rng.integers(margin, size - margin - h + 1))
        if all(x + w + gx <= a or c + gx <= x or y + h + gy <= b or d + gy <= y
               for a, b, c, d in taken):
            return x, y
    return None


def _page(rng: Rng, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One page and its line boxes (x0, y0, x1, y1), each the tight textbbox of a line."""
    page = _background(rng, size)
    img = Image.fromarray(np.rint(page).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    boxes: list[Box] = []
    for _ in range(int(rng.integers(3, MAX_LINES + 1))):
        # from 18 px up: the detector's boxes sit ~0.3 text heights outside the ink, so against
        # tight label boxes smaller lines fall under IoU 0.5 however well they are found
        text, font = _line(rng), _random_font(rng, 18, 40)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        # lines on one row closer than a couple of font sizes are one line to the detector
        gap = (2 * font.size, max(6, font.size // 2))
        spot = _place((right - left, bottom - top), boxes, gap, size, rng)
        if spot is None:
            continue
        ink = _colors(rng)[1]
        draw.text((spot[0] - left, spot[1] - top), text, fill=ink, font=font)
        boxes.append(draw.textbbox((spot[0] - left, spot[1] - top), text, font=font))
    return _normalize(_finish(img, rng)), np.array(boxes, np.float32).reshape(-1, 4)


def det_data(count: int, seed: int, size: int = 640) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 (count, 3, size, size), boxes float32 (count, 12, 4)) for the detector:
    pages of 3-12 non-overlapping lines; boxes are x0, y0, x1, y1 in input pixels, padded with
    NaN rows. The detector takes any multiple of 32; rapidocr would resize, we feed `size`."""
    if size % 32 or size < 64:
        raise UsageError(f"the detector needs a size that is a multiple of 32 (>= 64), got {size}")
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 3, size, size), np.float32)
    boxes = np.full((count, MAX_LINES, 4), np.nan, np.float32)
    for i in range(count):
        images[i], found = _page(rng, size)
        boxes[i, :len(found)] = found
    return images, boxes


def db_boxes(prob_map: np.ndarray, threshold: float = 0.3, box_threshold: float = 0.5,
             unclip_ratio: float = 1.6, min_size: int = 3) -> np.ndarray:
    """rapidocr's DBPostProcess with axis-aligned boxes: (K, 4) float32 x0, y0, x1, y1.

    The map is thresholded and dilated by 2x2; each 8-connected region's box (in pixel
    coordinates, as cv2.minAreaRect sees the contour) is dropped if its short side is under
    `min_size` or the mean probability over the box is under `box_threshold`, then grown on
    every side by area * unclip_ratio / perimeter, clipped to the map, and dropped if a side
    is 3 pixels or less.
    """
    from scipy import ndimage

    prob = np.asarray(prob_map, np.float32)
    if prob.ndim != 2:
        raise UsageError(f"expected a 2-D probability map (H, W), got shape {prob.shape}")
    height, width = prob.shape
    mask = ndimage.maximum_filter(prob > threshold, size=2)  # cv2.dilate with a 2x2 kernel
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    out = []
    for rows, cols in ndimage.find_objects(labels):
        x0, x1, y0, y1 = cols.start, cols.stop - 1, rows.start, rows.stop - 1
        w, h = x1 - x0, y1 - y0
        if min(w, h) < min_size or prob[y0:y1 + 1, x0:x1 + 1].mean() < box_threshold:
            continue
        d = w * h * unclip_ratio / (2 * max(w + h, 1))
        if min(w, h) + 2 * d < min_size + 2:
            continue
        box = np.rint([x0 - d, y0 - d, x1 + d, y1 + d])
        box[[0, 2]] = np.clip(box[[0, 2]], 0, width - 1)
        box[[1, 3]] = np.clip(box[[1, 3]], 0, height - 1)
        if box[2] - box[0] > 3 and box[3] - box[1] > 3:
            out.append(box)
    return np.array(out, np.float32).reshape(-1, 4)
