"""Pictures with words in them, made from a seed, for the OCR tests and `benchmarks.ocr_quality`.

Sample ``i`` of seed ``s`` depends on ``(s, i)`` alone, so a subset (the first 40, say) is the
same pictures as in the full set. Each picture carries its caption's lines and a few queries of
2 to 4 consecutive words of one line, so "which picture says this" is well defined.

The mix: English and Chinese; font sizes in four bands from 12 to 48 px (the size handed to
FreeType, the em square, as CSS's font-size); rotations up to 10 degrees; plain, noisy and
photographic backgrounds (the photos ship in the scikit-image and matplotlib wheels); captions in
Pillow's own scalable font and in DejaVu; meme-style outlined uppercase captions; terminal-like
screenshots with the caption among lines of shell output. Fonts come from Debian's
``fonts-dejavu-core`` and ``fonts-wqy-zenhei`` (``scripts/setup.sh test`` installs them).
"""

from __future__ import annotations

import functools
import io
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_DIRS = (Path("/usr/share/fonts/truetype"), Path("/usr/share/fonts/opentype"))
FONT_FILES = {
    "dejavu-sans": "dejavu/DejaVuSans.ttf",
    "dejavu-serif": "dejavu/DejaVuSerif.ttf",
    "dejavu-mono": "dejavu/DejaVuSansMono.ttf",
    "dejavu-sans-bold": "dejavu/DejaVuSans-Bold.ttf",
    "wqy-zenhei": "wqy/wqy-zenhei.ttc",
}
PILLOW_FONT = "pillow-default"  # Pillow's bundled scalable font (Aileron), needs no file
SIZE_BANDS = ((12, 15), (16, 23), (24, 35), (36, 48))
MAX_ANGLE = 10.0

# Words of 4 to 8 letters, none inside another, so a query names the pictures that say it.
_WORDS = """
    about above actor adult again agent album alarm alive anchor angle apple april arena army
    autumn badge baker banana basket beach beard berry bicycle blanket blue bottle bread bridge
    bright broken brother bucket budget butter button cabin camera candle canvas carbon carpet
    castle cattle change cheese cherry circle city clock cloud coffee column comet copper corner
    cotton county couple cousin credit crystal cupcake curtain danger deploy desert dinner doctor
    dollar dragon drawer dentist eagle early earth editor eleven empire energy engine evening
    failed falcon family farmer father feather fever fiddle finger fire flower forest fork friday
    frozen garden garlic ginger glass gold grape gravel guitar hammer harbor helmet honey horse
    hotel hunter island jacket jelly jungle kettle kitchen ladder lemon letter lizard lobster
    lucky magnet mango marble market meadow melon mirror monday monkey morning mountain music
    needle nephew night north number ocean office olive orange oyster paddle palace panda paper
    parrot pencil pepper piano pickle pilot planet plastic pocket potato purple puzzle rabbit
    radio raven river robot rocket saddle salad salmon sandal saturn school season shadow silver
    sister socket soldier spider spring square squid stone storm sugar summer sunday sunset
    swamp table tiger timber tomato tower train travel tuesday tunnel turtle umbrella valley
    velvet violin wagon walnut water weekend window winter wizard wolf yellow zebra
"""
WORDS = tuple(_WORDS.split())
_CHINESE_WORDS = """
    今天 明天 昨天 早上 晚上 周五 周末 天气 下雨 阳光 朋友 老师 学生 医生 工程 程序 代码 部署
    失败 成功 服务 数据 网络 电脑 手机 图片 音乐 电影 故事 问题 答案 会议 项目 计划 时间 地方
    城市 北京 上海 公司 商店 市场 价格 新闻 报告 文件 邮件 消息 咖啡 茶叶 米饭 面条 水果 苹果
    香蕉 西瓜 猫咪 小狗 熊猫 老虎 花园 森林 山水 河流 大海 月亮 星星 春天 夏天 秋天 冬天 快乐
    生日 礼物 旅行 火车 飞机 汽车 自行 运动 足球 篮球 游戏 比赛 冠军 学校 考试 作业 图书 历史
"""
CHINESE_WORDS = tuple(_CHINESE_WORDS.split())
# Shell output around a terminal's caption line, from its own vocabulary so no query meets it.
_SHELL_LINES = (
    "$ git status",
    "On branch main",
    "Your branch is up to date with 'origin/main'.",
    "$ ls -la /var/log",
    "drwxr-xr-x  2 root root 4096 Dec  7 05:43 .",
    "-rw-r--r--  1 root root  812 Dec  7 05:44 syslog",
    "$ python -m pytest -q",
    "........................................ [ 64%]",
    "$ docker compose up -d",
    "Container web-1  Started",
    "$ tail -n 3 build.log",
    "real 0m4.212s  user 0m3.901s  sys 0m0.310s",
    "$ npm run build",
    "> vite build --mode production",
    "exit code 1",
)
_TERMINAL_PREFIXES = ("error: ", "ERROR ", "[warn] ", "fatal: ", "> ", "info: ")
_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "motorcycle_left.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "grass.png",
    "gravel.png",
    "brick.png",
    "ihc.png",
    "retina.jpg",
)


class FontMissing(RuntimeError):
    """A font the set needs is not installed (``scripts/setup.sh test`` installs them)."""


@dataclass(frozen=True)
class TextSample:
    """One picture: its encoded bytes and what is written on it."""

    index: int
    data: bytes
    lines: tuple[str, ...]  # the caption as drawn, one entry per line (terminal filler excluded)
    queries: tuple[str, ...]  # 2-4 consecutive words of one line, as a person would type them
    script: str  # "latin" | "han"
    style: str  # "plain" | "meme" | "terminal"
    background: str  # "plain" | "noisy" | "photo" | "terminal"
    font: str
    size: int  # font size in px
    angle: float  # degrees, counter-clockwise
    width: int
    height: int

    @property
    def band(self) -> str:
        low, high = next(b for b in SIZE_BANDS if b[0] <= self.size <= b[1])
        return f"{low}-{high} px"


def font_path(name: str) -> Path | None:
    relative = FONT_FILES[name]
    return next((d / relative for d in FONT_DIRS if (d / relative).is_file()), None)


def missing_fonts() -> list[str]:
    """The Debian fonts the set uses that this machine lacks."""
    return [name for name in FONT_FILES if font_path(name) is None]


@functools.lru_cache(maxsize=256)
def load_font(name: str, size: int) -> ImageFont.FreeTypeFont:
    if name == PILLOW_FONT:
        return ImageFont.load_default(size=size)
    path = font_path(name)
    if path is None:
        raise FontMissing(
            f"font {name} ({FONT_FILES[name]}) is not installed; run scripts/setup.sh test "
            "(Debian packages fonts-dejavu-core and fonts-wqy-zenhei)"
        )
    return ImageFont.truetype(str(path), size)


@functools.lru_cache(maxsize=1)
def _photo_paths() -> tuple[Path, ...]:
    import matplotlib
    import skimage

    data = Path(skimage.__file__).parent / "data"
    paths = [data / name for name in _PHOTOS if (data / name).is_file()]
    paths.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    return tuple(paths)


@functools.lru_cache(maxsize=16)
def _photo(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def _luminance(rgb) -> float:
    r, g, b = rgb[:3]
    return 0.299 * r + 0.587 * g + 0.114 * b


def _contrasting(rng: random.Random, background_luminance: float) -> tuple[int, int, int]:
    """A text colour at least 110 luminance steps from the background's."""
    while True:
        colour = tuple(rng.randrange(256) for _ in range(3))
        if abs(_luminance(colour) - background_luminance) >= 110:
            return colour


def _caption_words(rng: random.Random, script: str, count: int) -> list[str]:
    return rng.sample(CHINESE_WORDS if script == "han" else WORDS, count)


def _join(words: list[str], script: str) -> str:
    return "".join(words) if script == "han" else " ".join(words)


def _queries(rng: random.Random, lines_words: list[list[str]], script: str) -> tuple[str, ...]:
    """Two queries of 2-4 consecutive words, each within one line (what a person would quote)."""
    queries: list[str] = []
    candidates = [w for w in lines_words if len(w) >= 2]
    if not candidates:  # one-word lines, made to order
        return tuple(_join(w, script) for w in lines_words)
    for _ in range(2):
        words = rng.choice(candidates)
        length = rng.randint(2, min(4, len(words)))
        start = rng.randint(0, len(words) - length)
        query = _join(words[start : start + length], script)
        if query not in queries:
            queries.append(query)
    return tuple(queries)


def _text_layer(
    text: str,
    *,
    font: ImageFont.FreeTypeFont,
    fill: tuple[int, int, int],
    stroke: tuple[int, int, int] | None,
    stroke_width: int,
) -> Image.Image:
    """The text alone on a transparent layer, tight around its ink plus a small margin."""
    width = stroke_width if stroke else 0
    left, top, right, bottom = font.getbbox(text, stroke_width=width)
    pad = 4 + width
    layer = Image.new("RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), (0, 0, 0, 0))
    ImageDraw.Draw(layer).text(
        (pad - left, pad - top),
        text,
        font=font,
        fill=(*fill, 255),
        stroke_width=width,
        stroke_fill=(*stroke, 255) if stroke else None,
    )
    return layer


def _canvas_size(rng: random.Random, need_w: int, need_h: int) -> tuple[int, int]:
    long_side = rng.randint(480, 1600)
    aspect = rng.choice((4 / 3, 16 / 9, 1.0, 3 / 4))
    w, h = (
        (long_side, round(long_side / aspect))
        if aspect >= 1
        else (
            round(long_side * aspect),
            long_side,
        )
    )
    return max(w, need_w), max(h, need_h)


def _background(
    rng: random.Random, nrng: np.random.Generator, kind: str, size: tuple[int, int]
) -> Image.Image:
    w, h = size
    if kind == "plain":
        return Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    if kind == "noisy":
        base = np.array([rng.randrange(256) for _ in range(3)], dtype=np.float32)
        gradient = np.linspace(-40, 40, w, dtype=np.float32)[None, :, None]
        noise = nrng.normal(0, rng.uniform(12, 35), (h, w, 3)).astype(np.float32)
        canvas = Image.fromarray(np.clip(base + gradient + noise, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(canvas)
        for _ in range(rng.randint(3, 12)):  # blobs and strokes, as in a busy picture
            x0, y0 = rng.randrange(w), rng.randrange(h)
            x1, y1 = x0 + rng.randint(10, w // 3 + 10), y0 + rng.randint(10, h // 3 + 10)
            colour = tuple(rng.randrange(256) for _ in range(3))
            if rng.random() < 0.5:
                draw.ellipse((x0, y0, x1, y1), fill=colour)
            else:
                draw.line((x0, y0, x1, y1), fill=colour, width=rng.randint(1, 6))
        return canvas
    photo = _photo(rng.choice(_photo_paths()))
    pw, ph = photo.size
    scale = max(w / pw, h / ph) * rng.uniform(1.0, 1.6)
    cw, ch = min(pw, round(w / scale)), min(ph, round(h / scale))
    left, top = rng.randint(0, pw - cw), rng.randint(0, ph - ch)
    return photo.resize(size, Image.Resampling.BICUBIC, box=(left, top, left + cw, top + ch))


def _region_luminance(canvas: Image.Image, box: tuple[int, int, int, int]) -> float:
    return float(np.asarray(canvas.crop(box).convert("L"), dtype=np.float32).mean())


def _place(
    canvas: Image.Image, layers: list[Image.Image], rng: random.Random, *, meme: bool
) -> list[tuple[int, int]]:
    """Where each line goes: stacked, at a random spot (memes: top and bottom, centred)."""
    w, h = canvas.size
    if meme and len(layers) == 2:
        top, bottom = layers
        return [
            ((w - top.width) // 2, rng.randint(0, max(0, h // 10 - 4))),
            ((w - bottom.width) // 2, h - bottom.height - rng.randint(0, max(0, h // 10 - 4))),
        ]
    block_w = max(layer.width for layer in layers)
    block_h = sum(layer.height for layer in layers)
    x = rng.randint(0, w - block_w)
    y = rng.randint(0, h - block_h)
    spots = []
    for layer in layers:
        spots.append((x + (block_w - layer.width) // 2 if meme else x, y))
        y += layer.height
    return spots


def _encode(image: Image.Image, rng: random.Random, background: str) -> bytes:
    out = io.BytesIO()
    if background in ("photo", "noisy") and rng.random() < 0.7:
        image.save(out, format="JPEG", quality=rng.randint(72, 92))
    else:
        image.save(out, format="PNG")
    return out.getvalue()


def _terminal(index: int, rng: random.Random, *, words: list[str], size: int) -> TextSample:
    font = load_font("dejavu-mono", size)
    caption = " ".join(words)
    prefix = rng.choice(_TERMINAL_PREFIXES)
    line_h = round(size * 1.35)
    caption_w = font.getbbox(prefix + caption)[2]
    width, height = rng.choice(((1280, 720), (1920, 1080), (1024, 640)))
    width = max(width, caption_w + 40)
    rows = max(3, (height - 20) // line_h)
    caption_row = rng.randrange(1, rows)
    shell = [rng.choice(_SHELL_LINES) for _ in range(rows)]
    shell[caption_row] = prefix + caption
    bg = rng.choice(((30, 30, 30), (12, 12, 40), (0, 43, 54), (40, 42, 54)))
    canvas = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(canvas)
    normal = rng.choice(((204, 204, 204), (238, 232, 213), (248, 248, 242)))
    accent = rng.choice(((255, 95, 86), (80, 250, 123), (241, 250, 140), (139, 233, 253)))
    for row, text in enumerate(shell):
        fill = accent if row == caption_row else normal
        draw.text((12, 10 + row * line_h), text, font=font, fill=fill)
    return TextSample(
        index=index,
        data=_encode(canvas, rng, "terminal"),
        lines=(caption,),
        queries=_queries(rng, [words], "latin"),
        script="latin",
        style="terminal",
        background="terminal",
        font="dejavu-mono",
        size=size,
        angle=0.0,
        width=width,
        height=height,
    )


def _caption(
    index: int,
    rng: random.Random,
    nrng: np.random.Generator,
    *,
    lines_words: list[list[str]],
    script: str,
    meme: bool,
    background: str,
    font_name: str,
    size: int,
    angle: float,
) -> TextSample:
    font = load_font(font_name, size)
    lines = [_join(w, script) for w in lines_words]
    drawn = [line.upper() for line in lines] if meme and script == "latin" else lines
    # The text's colours depend on the background, which needs the canvas size, which needs the
    # text's size: lay out in black first (a layer's size does not depend on its colour).
    stroke_width = max(2, size // 9) if meme else max(1, size // 14)
    outlined = meme or (background == "photo" and rng.random() < 0.6)
    probes = [
        _text_layer(
            t,
            font=font,
            fill=(0, 0, 0),
            stroke=(0, 0, 0) if outlined else None,
            stroke_width=stroke_width,
        ).rotate(angle, expand=True, resample=Image.Resampling.BICUBIC)
        for t in drawn
    ]
    need_w = max(p.width for p in probes) + 16
    need_h = sum(p.height for p in probes) + 16 + (size * 2 if meme else 0)
    canvas = _background(rng, nrng, background, _canvas_size(rng, need_w, need_h))
    spots = _place(canvas, probes, rng, meme=meme)
    for text, probe, (x, y) in zip(drawn, probes, spots, strict=True):
        if meme:
            fill, stroke = (255, 255, 255), (0, 0, 0)
        else:
            under = _region_luminance(canvas, (x, y, x + probe.width, y + probe.height))
            fill = _contrasting(rng, under)
            stroke = (
                ((0, 0, 0) if _luminance(fill) > 127 else (255, 255, 255)) if outlined else None
            )
        layer = _text_layer(text, font=font, fill=fill, stroke=stroke, stroke_width=stroke_width)
        layer = layer.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC)
        canvas.paste(layer, (x, y), layer)
    return TextSample(
        index=index,
        data=_encode(canvas, rng, background),
        lines=tuple(lines),
        queries=_queries(rng, lines_words, script),
        script=script,
        style="meme" if meme else "plain",
        background=background,
        font=font_name,
        size=size,
        angle=round(angle, 2),
        width=canvas.width,
        height=canvas.height,
    )


def make_sample(seed: int, index: int) -> TextSample:
    """Picture ``index`` of the set made from ``seed``."""
    rng = random.Random(f"{seed}:{index}")
    nrng = np.random.default_rng([seed, index])
    low, high = rng.choice(SIZE_BANDS)
    size = rng.randint(low, high)
    script = "han" if rng.random() < 0.22 else "latin"
    roll = rng.random()
    if script == "latin" and roll < 0.18:
        words = _caption_words(rng, "latin", rng.randint(3, 6))
        return _terminal(index, rng, words=words, size=size)
    meme = roll > 0.78
    angle = 0.0 if rng.random() < 0.3 else rng.uniform(-MAX_ANGLE, MAX_ANGLE)
    if script == "han":
        font_name = "wqy-zenhei"
    elif meme:
        font_name = "dejavu-sans-bold"
    else:
        font_name = rng.choice((PILLOW_FONT, "dejavu-sans", "dejavu-serif", "dejavu-mono"))
    words = _caption_words(rng, script, rng.randint(4, 7) if script == "han" else rng.randint(3, 6))
    if (meme or rng.random() < 0.3) and len(words) >= 4:
        cut = len(words) // 2
        lines_words = [words[:cut], words[cut:]]
    else:
        lines_words = [words]
    return _caption(
        index,
        rng,
        nrng,
        lines_words=lines_words,
        script=script,
        meme=meme,
        background=rng.choice(("plain", "noisy", "photo")),
        font_name=font_name,
        size=size,
        angle=angle,
    )


def caption_sample(
    lines: list[str],
    *,
    script: str = "latin",
    style: str = "plain",
    background: str = "plain",
    font: str | None = None,
    size: int = 24,
    angle: float = 0.0,
    seed: int = 0,
) -> TextSample:
    """One captioned picture made to order (a test's English caption, meme, Chinese line)."""
    if style not in ("plain", "meme"):
        raise ValueError(f"style: plain or meme, not {style!r}")
    if font is None:
        font = {"han": "wqy-zenhei"}.get(
            script, "dejavu-sans-bold" if style == "meme" else "dejavu-sans"
        )
    # Chinese has no spaces: its queries are runs of characters.
    lines_words = [list(line) if script == "han" else line.split() for line in lines]
    return _caption(
        -1,
        random.Random(seed),
        np.random.default_rng(seed),
        lines_words=lines_words,
        script=script,
        meme=style == "meme",
        background=background,
        font_name=font,
        size=size,
        angle=angle,
    )


def terminal_sample(caption: str, *, size: int = 14, seed: int = 0) -> TextSample:
    """A terminal-like screenshot with ``caption`` on one line among shell output."""
    return _terminal(-1, random.Random(seed), words=caption.split(), size=size)


def make_set(seed: int = 21, count: int = 500) -> list[TextSample]:
    return [make_sample(seed, i) for i in range(count)]
