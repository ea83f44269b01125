#!/usr/bin/env python3
"""Write a few deliberately off-style 16x16 textures for testing the asset lint
(`tarflow eval --heatmap`): the held-out test split plus these, in the class folders an artist
might drop them into. Usage: python3 scripts/offstyle_textures.py OUT_DIR (needs Pillow).

- stone/offstyle_noise.png     uniform RGB noise (what a broken export looks like)
- ground/offstyle_photo.png    a photo-like texture: smoothed noise under soft lighting
- metal/offstyle_gradient.png  a smooth diagonal gradient (no pixel-art detail at all)
- items/offstyle_text.png      black text on white ("Ab")
- tools/offstyle_vector.png    a smooth-shaded, anti-aliased icon with soft alpha (another
                               game's vector style, where this set uses hard pixel art)
"""
import random
import shutil
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

S = 16


def noise(rng):
    img = Image.new("RGBA", (S, S))
    img.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256), 255) for _ in range(S * S)])
    return img


def photo(rng):
    big = Image.new("RGB", (64, 64))
    big.putdata([tuple(rng.randrange(90, 170) for _ in range(3)) for _ in range(64 * 64)])
    big = big.filter(ImageFilter.GaussianBlur(2.5))
    px = big.load()
    for y in range(64):
        for x in range(64):
            light = 0.6 + 0.6 * (x + y) / 126
            r, g, b = px[x, y]
            px[x, y] = (min(255, int(r * light * 1.1)), min(255, int(g * light)), min(255, int(b * light * 0.8)))
    return big.resize((S, S), Image.LANCZOS).convert("RGBA")


def gradient(_rng):
    img = Image.new("RGBA", (S, S))
    img.putdata([(40 + 12 * x, 60 + 8 * y, 200 - 5 * (x + y), 255) for y in range(S) for x in range(S)])
    return img


def text(_rng):
    img = Image.new("RGBA", (S, S), (255, 255, 255, 255))
    d = ImageDraw.Draw(img)
    d.text((1, 2), "Ab", fill=(0, 0, 0, 255), font=ImageFont.load_default())
    return img


def vector(_rng):
    big = Image.new("RGBA", (128, 128), (0, 0, 0, 0))
    d = ImageDraw.Draw(big)
    for r in range(56, 0, -2):
        t = r / 56
        d.ellipse((64 - r - 6 * (1 - t), 64 - r - 6 * (1 - t), 64 + r - 6 * (1 - t), 64 + r - 6 * (1 - t)),
                  fill=(int(60 + 160 * (1 - t)), int(120 + 120 * (1 - t)), 255, int(255 * min(1, 1.3 - 0.3 * t))))
    return big.resize((S, S), Image.LANCZOS)


def main():
    out = Path(sys.argv[1])
    rng = random.Random(0)
    for folder, name, make in [
        ("stone", "offstyle_noise", noise),
        ("ground", "offstyle_photo", photo),
        ("metal", "offstyle_gradient", gradient),
        ("items", "offstyle_text", text),
        ("tools", "offstyle_vector", vector),
    ]:
        (out / folder).mkdir(parents=True, exist_ok=True)
        make(rng).save(out / folder / f"{name}.png")


if __name__ == "__main__":
    main()
