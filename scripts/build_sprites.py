#!/usr/bin/env python3
"""Rebuild assets/sprites32 from Debian's `crawl` 0.28 source package and crawl/tiles' CC0
exports, reproducibly.

    python3 scripts/build_sprites.py SOURCE --crawl-tiles TILES [--out assets/sprites32]
        [--sheets DIR] [--log FILE]

SOURCE is the unpacked upstream tree (`stone_soup-0.28.0/`, or its `source/rltiles/`), the
`crawl_0.28.0.orig.tar.xz` tarball or the `crawl_0.28.0-1.1.dsc` beside it. To get them without
touching the system's apt sources, use a private apt directory with a `deb-src` line for the
system's suite (bookworm here):

    mkdir -p /tmp/apt-src/lists/partial /tmp/apt-src/dl
    echo 'deb-src http://deb.debian.org/debian bookworm main' > /tmp/apt-src/sources.list
    APT="-o Dir::Etc::SourceList=/tmp/apt-src/sources.list -o Dir::Etc::SourceParts=/dev/null
         -o Dir::State::Lists=/tmp/apt-src/lists"
    apt-get $APT update
    cd /tmp/apt-src/dl && apt-get $APT source --download-only crawl

TILES is a checkout of https://github.com/crawl/tiles at commit a6ea165 (its
`TILES_UNDER_UNKNOWN_LICENSE.md` must be the copy beside this script), whose curated CC0 exports
`releases/Nov-2015/` and `releases/Ancient/Oct-5-2010/` hold earlier drawings of tiles that crawl
later redrew or dropped (1,104 of the 3,705 sprites):

    git clone https://github.com/crawl/tiles /tmp/crawl-tiles && git -C /tmp/crawl-tiles checkout a6ea165
    python3 scripts/build_sprites.py /tmp/apt-src/dl/crawl_0.28.0.orig.tar.xz --crawl-tiles /tmp/crawl-tiles

Without `--crawl-tiles` only the package's tiles are used (2,601 sprites: not the committed set).

(The Debian packaging tarball `crawl_0.28.0-1.1.debian.tar.xz` is only needed for its
`debian/copyright`, which Debian installs unchanged as `/usr/share/doc/crawl-common/copyright`:
`apt-get download crawl-common` and `dpkg-deb -x` give it too. Pass it with `--debian-copyright`
to check the quotation in ATTRIBUTION.md against it.)

What it does, in order (every rule below is checked by looking at contact sheets, `--sheets`):

1. Takes every 32x32 PNG under `source/rltiles/` (6,157 files; and 11 of 30 or 31 pixels a side,
   padded), then those of the two crawl/tiles exports (the 2010 one's `dc-mon/`, `dc-dngn/`...
   read as today's `mon/`, `dngn/`), as 8-bit RGBA.
2. Leaves out, with the reason logged (`--log`):
   - every tile that `crawl_tiles_TILES_UNDER_UNKNOWN_LICENSE.md` (crawl/tiles, commit a6ea165,
     copied beside this script) names: a listed file name anywhere in the tree, and a listed
     path, also under its old `dc-*` folder names, and that path's file name anywhere;
   - what is not a stand-alone sprite: GUI icons (`gui/`, `misc/`, spell and ability icons),
     paper-doll parts (`player/`, worn armour), the `i-*` identification overlays and `brands/`,
     shadows, wave, border and edge overlays of water and floors, tentacle segments and ends,
     blood splats, masks, halos, cursors, pedestal and sarcophagus halves and other partial
     pieces (`SKIP_DIR`, `SKIP_NAME`);
   - near-empty tiles (fewer than `MIN_OPAQUE` opaque pixels);
   - exact duplicates (same RGBA, transparent pixels' colour ignored) and near duplicates
     of a kept tile or its mirror image (under `NEAR_DUP_FRACTION` of the opaque pixels differ by
     more than `NEAR_DUP_LEVELS`: animation frames that move a few pixels, grass with three
     flowers more; or a mean difference under `NEAR_COPY_LEVELS`, `tarflow eval`'s near-copy
     threshold); the first in path order is kept (the package before the exports, newest
     first; `UNUSED/` last in each).
3. Sorts each tile into a class by its folder and name (`CLASS_RULES`, first match wins).
4. Splits each class into `train/` and `test/` by *family* (the file name without its trailing
   number, so `brick_dark0..15` or `potion1..3` never straddle the split): families in the order
   of a fixed hash go to `test/` until it holds at least `TEST_FRACTION` of the class.
5. Writes `OUT/{train,test}/<class>/<name>.png` (RGBA, fully transparent pixels zeroed, otherwise
   the tile's pixels unchanged) and `OUT/ATTRIBUTION.md` (every file's source path, licence,
   package version, and the upstream and Debian licence statements quoted).

Needs Pillow and numpy (`python3 -m pip install pillow numpy`).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import re
import shutil
import sys
import tarfile
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

PACKAGE = "crawl"
VERSION = "2:0.28.0-1.1"
ORIG = "crawl_0.28.0.orig.tar.xz"
ORIG_SHA256 = "5a6be168f8888b84bdb199184ca20bd8636f77ba7e9e0124ebee8850092f2f47"
UNKNOWN_LICENCE_LIST = Path(__file__).with_name("crawl_tiles_TILES_UNDER_UNKNOWN_LICENSE.md")

SIZE = 32
MIN_OPAQUE = 48  # opaque (alpha >= 128) pixels of 1,024; fewer is a near-empty tile
NEAR_DUP_LEVELS = 16  # a pixel differs when a channel (premultiplied RGBA) moves more than this
NEAR_DUP_FRACTION = 0.02  # near duplicate: fewer differing pixels than this share of opaque ones
NEAR_COPY_LEVELS = 2.0  # ... or a mean |difference| under this (`tarflow eval`'s near-copy)
TEST_FRACTION = 0.12

# Folders (relative to rltiles, prefix match) that hold no stand-alone sprites.
SKIP_DIR = (
    "gui/",  # GUI: abilities, commands, spells, skills, tabs, backgrounds
    "spells/",  # spell icons (the 2010 export's folder; gui/spells/ later)
    "misc/",  # cursors, masks, halos, blood splats, numbers, status icons
    "player/",  # paper-doll parts: bodies, hair, beards, worn armour, held weapons
    "mon/tentacles/",  # tentacle ends and segments: pieces of one monster
    "UNUSED/gui/",
    "UNUSED/player/",
    "UNUSED/worn/",
    "UNUSED/spells/",
    "UNUSED/other/",  # i-* overlays, auras, sparkles, pentagram pieces (items: EXTRA_ITEMS)
    "UNUSED/floor/sigils/",  # line pieces of floor sigils
    "item/armour/brands/",
    "item/weapon/brands/",
    "item/food/chunk_brands/",
)

# Whole sprites inside the skipped folders: the player's transformation forms (complete figures,
# not doll layers) and the finished items among UNUSED/other's overlays.
KEEP_IN_SKIPPED = re.compile(
    r"^player/transform/"
    r"|^UNUSED/other/(magic_lamp|misc_chesspiece|misc_deck|misc_deck_legendary|insect_eggs|"
    r"spwpn_sceptre_of_asmodeus2|spwpn_staff_of_dispater2)\.png$"
)

# Paths (relative to rltiles) of overlays and partial pieces, checked on the removed tiles' sheet.
SKIP_PATH = re.compile(
    r"/i-[^/]*$"  # identification overlays drawn over an item
    r"|overlay"  # ice, slime and icy-wall edge overlays, statue weapon overlays
    r"|^dngn/wall/shadow_|^UNUSED/features/shadow"  # wall shadows
    r"|_wave_|_wave\.png$|_bord_|/grey_dirt_b"  # water and dirt border pieces
    r"|^dngn/floor/pedestal_(n|s|e|w|ne|nw|se|sw)\.png$|sarcophagus_pedestal_"  # halves
    r"|^dngn/(doors/)?v?gate_"  # the left, middle and right (up, down) pieces of wide gates
    r"|_(left|right)\.png$"  # other left/right halves (sigils, toadstools)
    r"|/transparent_|^dngn/unseen|/dngn_unseen|dimension_edge"  # see-through and unseen markers
    r"|^dngn/floor/(grass/)?(dirt|grass)_(n|s|e|w|ne|nw|se|sw)\.png$"  # edge pieces (2010)
    r"|^mon/mutantbeast/(?!base)"  # the facets a mutant beast is drawn from (wings, horns)
    r"|_trail\d*\.png$|/disjunct\d|/indicator_|_range\.png$"  # effect pieces
)

# (class, regex on the path relative to rltiles), first match wins. Checked on contact sheets.
CLASS_RULES: list[tuple[str, str]] = [
    # Items. Wands, staves and rods are drawn as weapons are (a thin shaft across the tile):
    # a class of their own was read as weapons by the fidelity classifier, 13 of 19.
    (
        "weapon",
        r"^(item/weapon|UNUSED/weapons)/|^UNUSED/other/spwpn_|^item/(wand|staff|rod)/",
    ),
    ("armour", r"^(item/armour|UNUSED/armour)/"),
    # Spellbooks and manuals; potions, scrolls and food (each too thin alone: 10 to 41).
    ("book", r"^item/book/|^UNUSED/books/"),
    ("consumable", r"^item/(potion|scroll|food)/|^UNUSED/(food|potions)/"),
    # Gold, rings, amulets, gems, runes, decks, lamps and the other evocables.
    (
        "treasure",
        r"^item/(gold|misc|ring|amulet)/|^UNUSED/rings/"
        r"|^UNUSED/other/(magic_lamp|misc_|insect_eggs)",
    ),
    # Dungeon.
    ("altar", r"^dngn/altars/|^UNUSED/features/altar"),
    # Doors, gates, stairs and portals: the ways between places (doors alone: 60 sprites).
    (
        "passage",
        r"^dngn/(doors|gateways)/|^UNUSED/features/.*(stair|portal|gate|exit|enter)"
        r"|^dngn/dngn_(closed|open)_door",
    ),
    # Ground to walk or wade on: floors, shallow and deep water, lava (water alone: 61).
    ("floor", r"^dngn/water/|^dngn/floor/"),
    ("wall", r"^dngn/wall/"),
    ("dungeon_feature", r"^dngn/|^UNUSED/features/"),
    # Creatures.
    ("monster", r"^mon/|^UNUSED/monsters/|^player/transform/"),
    ("effect", r"^effect/|^UNUSED/tomahawk"),
]


class Source(NamedTuple):
    """Where tiles come from: the package's rltiles (tag and label empty) or a crawl/tiles export."""

    tag: str  # prefix of the output names ("" for the package)
    label: str  # prefix of the source paths in the log and ATTRIBUTION.md
    root: Path


class Tile(NamedTuple):
    src: Source
    orig: str  # path under the source's root, as the source spells it

    @property
    def rel(self) -> str:
        """The path the rules read: the 2010 export's `dc-mon/` is today's `mon/`."""
        return normalise(self.orig)

    @property
    def name(self) -> str:
        return self.orig.rsplit("/", 1)[-1]

    @property
    def path(self) -> Path:
        return self.src.root / self.orig

    @property
    def source_path(self) -> str:
        return f"{self.src.label}{self.orig}"

    @staticmethod
    def from_source_path(roots: dict[str, Source], spath: str) -> "Tile":
        for label, src in sorted(roots.items(), key=lambda kv: -len(kv[0])):
            if spath.startswith(label):
                return Tile(src, spath[len(label) :])
        raise KeyError(spath)


def normalise(orig: str) -> str:
    return re.sub(r"^dc-", "", orig)


# crawl/tiles' curated CC0 exports, oldest last (a tile's newest drawing wins the duplicate checks).
CRAWL_TILES_COMMIT = "a6ea165"
CRAWL_TILES_EXPORTS = [
    ("nov2015", "releases/Nov-2015"),
    ("oct2010", "releases/Ancient/Oct-5-2010"),
]
CRAWL_TILES_QUOTE = (
    "Many of those artist making these changes have signed off their copyright, returning "
    "these tiles to a license similar to \"public domain\", CC Zero "
    "(http://creativecommons.org/publicdomain/zero/1.0/)."
)
CRAWL_TILES_2010_QUOTE = (
    "The wonderful developers/artists who work on Crawl Stone Soup have signed off their "
    "copyrights on the tiles enclosed in here, returning them back to a state similar to public "
    "domain (CC Zero, see LICENSE.TXT). They are free to use for any purpose."
)


def crawl_tiles_sources(root: Path) -> list[Source]:
    """The exports of a crawl/tiles checkout, after checking it is the one this script read."""
    listed = root / "TILES_UNDER_UNKNOWN_LICENSE.md"
    if not listed.is_file():
        sys.exit(f"{root}: not a crawl/tiles checkout (no TILES_UNDER_UNKNOWN_LICENSE.md)")
    if listed.read_bytes() != UNKNOWN_LICENCE_LIST.read_bytes():
        sys.exit(
            f"{listed} differs from {UNKNOWN_LICENCE_LIST}: check out crawl/tiles at commit "
            f"{CRAWL_TILES_COMMIT}, or review the new list and copy it beside this script"
        )
    readme = " ".join((root / "README.md").read_text(encoding="utf-8").split())
    if CRAWL_TILES_QUOTE not in readme:
        sys.exit(f"{root}/README.md no longer says: {CRAWL_TILES_QUOTE[:60]}...")
    out = []
    for tag, sub in CRAWL_TILES_EXPORTS:
        d = root / sub
        if not d.is_dir():
            sys.exit(f"{d}: missing from the crawl/tiles checkout")
        out.append(Source(tag, f"crawl/tiles:{sub}/", d))
    old = root / CRAWL_TILES_EXPORTS[1][1] / "README.txt"
    if CRAWL_TILES_2010_QUOTE not in " ".join(old.read_text(encoding="utf-8").split()):
        sys.exit(f"{old} no longer says: {CRAWL_TILES_2010_QUOTE[:60]}...")
    return out


def find_rltiles(source: Path, tmp: Path) -> Path:
    """The rltiles folder of SOURCE (a tree, the orig tarball or the .dsc beside it)."""
    if source.is_dir():
        for cand in (source, source / "rltiles", source / "source" / "rltiles"):
            if (cand / "dc-mon.txt").is_file():
                return cand
        hits = sorted(source.glob("*/source/rltiles/dc-mon.txt"))
        if hits:
            return hits[0].parent
        sys.exit(f"no source/rltiles under {source}")
    if source.suffix == ".dsc":
        source = source.with_name(ORIG)
    if not source.is_file():
        sys.exit(f"{source}: not found")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    if source.name == ORIG and digest != ORIG_SHA256:
        sys.exit(f"{source}: sha256 {digest}, expected {ORIG_SHA256} (the .dsc's)")
    print(f"unpacking rltiles from {source} ...", file=sys.stderr)
    with tarfile.open(source) as tar:
        members = [
            m
            for m in tar.getmembers()
            if "/source/rltiles/" in m.name
            or m.name.endswith("/LICENSE")
            and m.name.count("/") == 1
        ]
        tar.extractall(tmp, members=members, filter="data")
    return find_rltiles(tmp, tmp)


def kind(rel: str) -> str:
    """The kind of tile a path holds, the same across crawl's folder renames (dc-mon/ -> mon/,
    UNUSED/monsters/, player/transform/): mon, dngn, effect, item/<sub>, or the top folder."""
    rel = normalise(rel)
    parts = rel.split("/")
    if parts[0] == "mon" or rel.startswith(("UNUSED/monsters/", "player/transform/")):
        return "mon"
    if parts[0] == "dngn" or rel.startswith(("UNUSED/features/", "UNUSED/floor/")):
        return "dngn"
    if parts[0] == "item" and len(parts) > 2:
        return "item/" + parts[1]
    if rel.startswith(("UNUSED/weapons/", "item/weapon/")):
        return "item/weapon"
    if rel.startswith(("UNUSED/armour/", "item/armour/")):
        return "item/armour"
    return parts[0]


def load_unknown_licence(path: Path) -> tuple[set[str], set[str], set[tuple[str, str]]]:
    """What the crawl/tiles list names: (file names anywhere, rltiles-relative paths,
    (kind, file name) of each listed path, to catch the same tile moved to another folder)."""
    names, paths, moved = set(), set(), set()
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\s*-\s+(\S.*\.png)\s*$", line)
        if not m:
            continue
        entry = m.group(1).strip()
        if "/" not in entry:
            names.add(entry)
            continue
        rel = entry.split("rltiles/", 1)[1] if "rltiles/" in entry else entry
        paths.add(rel)
        # crawl renamed dc-mon/ to mon/, dc-dngn/ to dngn/, ... after 2010.
        paths.add(re.sub(r"^dc-(mon|dngn|item|misc|player|effect)/", r"\1/", rel))
        moved.add((kind(rel), rel.rsplit("/", 1)[1]))
    return names, paths, moved


def load_rgba(path: Path) -> np.ndarray:
    im = Image.open(path)
    im.load()
    a = np.array(im.convert("RGBA"), dtype=np.uint8)
    a[a[..., 3] == 0] = 0  # a fully transparent pixel has no colour
    h, w = a.shape[:2]
    if (h, w) != (SIZE, SIZE):  # a tile a pixel or two short: pad it, bottom-centred
        out = np.zeros((SIZE, SIZE, 4), np.uint8)
        x0, y0 = (SIZE - w) // 2, SIZE - h
        out[y0 : y0 + h, x0 : x0 + w] = a
        a = out
    return a


def family(stem: str) -> str:
    """A tile's family: its name without the trailing number (and separator)."""
    f = re.sub(r"[_-]?\d+[a-z]?$", "", stem)
    return f or stem


def classify(rel: str) -> str | None:
    for cls, pat in CLASS_RULES:
        if re.search(pat, rel):
            return cls
    return None


def skip_reason(rel: str, unknown) -> str | None:
    names, paths, moved = unknown
    name = rel.rsplit("/", 1)[-1]
    if name in names or rel in paths or (kind(rel), name) in moved:
        return "unknown licence (crawl/tiles list)"
    for d in SKIP_DIR:
        if rel.startswith(d) and not KEEP_IN_SKIPPED.search(rel):
            return f"not a stand-alone sprite ({d})"
    if SKIP_PATH.search(rel):
        return "overlay or partial piece"
    return None


def sort_key(rel: str) -> tuple[bool, str]:
    return (rel.startswith("UNUSED/"), rel)


def near_duplicates(arrs: list[np.ndarray]) -> dict[int, int]:
    """{i: j} for each image i that nearly repeats an earlier kept image j or its mirror image
    (training flips sprites): fewer than NEAR_DUP_FRACTION of the pixels opaque in either differ
    by more than NEAR_DUP_LEVELS in a channel (animation frames, recolours of a few pixels, grass
    with three flowers more), or the mean difference is under NEAR_COPY_LEVELS per subpixel (the
    threshold of `tarflow eval`'s copy check). Keeps the variants of a texture that move its
    details about."""
    n = len(arrs)
    x = np.stack(arrs).astype(np.int16)
    xm = x[:, :, ::-1]
    x, xm = x.reshape(n, -1, 4), np.ascontiguousarray(xm).reshape(n, -1, 4)
    opaque = x[..., 3] > 0
    # An RMS bound on both tests prunes most pairs with one matrix product.
    f, fm = x.reshape(n, -1).astype(np.float32), xm.reshape(n, -1).astype(np.float32)
    sq = (f * f).sum(1)
    d = f.shape[1]
    bound = max(NEAR_DUP_LEVELS**2 + NEAR_DUP_FRACTION * 4 * 255.0**2, 255.0 * NEAR_COPY_LEVELS)
    bound *= d
    dup: dict[int, int] = {}
    kept: list[int] = []
    for start in range(0, n, 256):
        block = f[start : start + 256]
        gram, gram_m = block @ f.T, block @ fm.T
        for i in range(start, min(n, start + 256)):
            k = np.array(kept, dtype=int)
            for g, other in ((gram, x), (gram_m, xm)):
                d2 = sq[k] + sq[i] - 2.0 * g[i - start, k]
                for j in k[d2 <= bound]:
                    diff = np.abs(x[i] - other[j])
                    union = max(1, int((opaque[i] | opaque[j]).sum()))
                    differ = int((diff.max(-1) > NEAR_DUP_LEVELS).sum())
                    if differ < NEAR_DUP_FRACTION * union or diff.mean() < NEAR_COPY_LEVELS:
                        dup[i] = int(j)
                        break
                if i in dup:
                    break
            if i not in dup:
                kept.append(i)
    return dup


def split_test(names_by_family: dict[str, list[str]], fraction: float) -> set[str]:
    """Families (in fixed-hash order) held out until the class's test share is >= fraction."""
    n = sum(len(v) for v in names_by_family.values())
    target = max(1, math.ceil(fraction * n))
    order = sorted(names_by_family, key=lambda f: hashlib.sha256(f.encode()).hexdigest())
    test, count = set(), 0
    for fam in order:
        size = len(names_by_family[fam])
        if count + size > max(target * 1.5, target + 2):
            continue  # a big family would overshoot: leave it in train
        test.add(fam)
        count += size
        if count >= target:
            break
    return test


def sheet(items: list[tuple[str, np.ndarray]], path: Path, cols: int = 24, scale: int = 3):
    """A contact sheet: each tile scaled up on a grey checker, in path order."""
    rows = max(1, math.ceil(len(items) / cols))
    cell = SIZE * scale + 4
    out = Image.new("RGBA", (cols * cell, rows * cell), (40, 40, 40, 255))
    yy, xx = np.mgrid[0 : SIZE * scale, 0 : SIZE * scale]
    checker = np.where(((yy // 8 + xx // 8) % 2)[..., None] == 0, 90, 120).astype(np.uint8)
    bg = Image.fromarray(np.concatenate([np.repeat(checker, 3, -1), np.full_like(checker, 255)], -1))
    for i, (_, a) in enumerate(items):
        im = Image.fromarray(a).resize((SIZE * scale, SIZE * scale), Image.NEAREST)
        tile = bg.copy()
        tile.alpha_composite(im)
        out.paste(tile, ((i % cols) * cell + 2, (i // cols) * cell + 2))
    out.convert("RGB").save(path)


def write_png(a: np.ndarray, path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(a, "RGBA").save(buf, format="PNG", optimize=True)
    path.write_bytes(buf.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path, help="unpacked crawl 0.28 tree, its orig tarball or .dsc")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "assets/sprites32")
    ap.add_argument(
        "--crawl-tiles",
        type=Path,
        help="a checkout of https://github.com/crawl/tiles at commit "
        f"{CRAWL_TILES_COMMIT}: adds its CC0 exports' tiles that the package lacks",
    )
    ap.add_argument("--sheets", type=Path, help="write a contact sheet of every class here")
    ap.add_argument("--log", type=Path, help="write every tile's decision (TSV) here")
    ap.add_argument("--debian-copyright", type=Path, help="debian/copyright, to check the quote")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tarflow-sprites-"))
    try:
        build(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build(args, tmp: Path) -> None:
    rl = find_rltiles(args.source.resolve(), tmp)
    top = rl.parent.parent  # stone_soup-0.28.0
    licence_text = (top / "LICENSE").read_text(encoding="utf-8")
    for quote in UPSTREAM_QUOTE:
        if " ".join(quote.split()) not in " ".join(licence_text.split()):
            sys.exit(f"upstream LICENSE no longer says: {quote[:60]}...")
    if args.debian_copyright:
        deb = " ".join(args.debian_copyright.read_text(encoding="utf-8").split())
        if " ".join(DEBIAN_QUOTE.split()) not in deb:
            sys.exit("debian/copyright no longer says what ATTRIBUTION.md quotes")
    unknown = load_unknown_licence(UNKNOWN_LICENCE_LIST)

    # The package's tiles first (the newest drawing of a tile wins the duplicate checks), then
    # crawl/tiles' CC0 exports: tiles of earlier versions that crawl redrew or dropped.
    sources = [Source("", "", rl)]
    if args.crawl_tiles:
        sources += crawl_tiles_sources(args.crawl_tiles.resolve())
    else:
        print(
            "note: without --crawl-tiles only the package's tiles are used (assets/sprites32 "
            "also holds crawl/tiles' CC0 exports)",
            file=sys.stderr,
        )

    log: list[tuple[str, str, str]] = []  # (source path, decision, detail)
    cand: list[tuple[Tile, str, np.ndarray]] = []  # (tile, class, rgba)
    seen_hash: dict[bytes, str] = {}
    n32 = Counter()
    for src in sources:
        files = sorted(
            (
                p.relative_to(src.root).as_posix()
                for p in src.root.rglob("*.png")
                if not p.name.startswith(".")
            ),
            key=lambda f: sort_key(normalise(f)),
        )  # "._*" files are macOS resource forks, not images
        for orig in files:
            tile = Tile(src, orig)
            with Image.open(tile.path) as im:
                w, h = im.size
                # 32x32, and the few tiles of 30 or 31 pixels (padded); not the 32x48 giants.
                if not (SIZE - 2 <= w <= SIZE and SIZE - 2 <= h <= SIZE):
                    continue
            n32[src.label] += 1
            why = skip_reason(tile.rel, unknown) or skip_reason(orig, unknown)
            if why:
                log.append((tile.source_path, "removed", why))
                continue
            cls = classify(tile.rel)
            if cls is None:
                log.append((tile.source_path, "removed", "no class"))
                continue
            a = load_rgba(tile.path)
            if int((a[..., 3] >= 128).sum()) < MIN_OPAQUE:
                log.append((tile.source_path, "removed", "near-empty"))
                continue
            h = hashlib.sha256(a.tobytes()).digest()
            if h in seen_hash:
                log.append((tile.source_path, "removed", f"duplicate of {seen_hash[h]}"))
                continue
            seen_hash[h] = tile.source_path
            cand.append((tile, cls, a))

    dup = near_duplicates([a for _, _, a in cand])
    kept = []
    for i, (tile, cls, a) in enumerate(cand):
        if i in dup:
            first = cand[dup[i]][0].source_path
            log.append((tile.source_path, "removed", f"near duplicate of {first}"))
        else:
            kept.append((tile, cls, a))

    # Output names: the file name (after the export's tag), with its folder prefixed where two
    # share one in a class.
    by_class: dict[str, list[tuple[Tile, np.ndarray]]] = defaultdict(list)
    for tile, cls, a in kept:
        by_class[cls].append((tile, a))
    entries = []  # (split, cls, outname, tile, a)
    for cls in sorted(by_class):
        items = by_class[cls]
        counts = Counter((t.src.tag, t.name) for t, _ in items)
        named = []
        for tile, a in items:
            base = tile.name
            if counts[(tile.src.tag, base)] > 1:
                base = f"{tile.rel.split('/')[-2]}_{base}"
            if tile.src.tag:
                base = f"{tile.src.tag}_{base}"
            named.append((base, tile, a))
        assert len({b for b, _, _ in named}) == len(named), cls
        fams: dict[str, list[str]] = defaultdict(list)
        # A family spans the sources: an old drawing of a tile never straddles the split
        # with its new one.
        for base, tile, _ in named:
            fams[family(tile.name[:-4])].append(base)
        test_fams = split_test(fams, TEST_FRACTION)
        for base, tile, a in named:
            split = "test" if family(tile.name[:-4]) in test_fams else "train"
            entries.append((split, cls, base, tile, a))
            log.append((tile.source_path, f"kept {split}/{cls}", base))

    out = args.out
    for split in ("train", "test"):
        if (out / split).exists():
            shutil.rmtree(out / split)
    for split, cls, base, rel, a in entries:
        d = out / split / cls
        d.mkdir(parents=True, exist_ok=True)
        write_png(a, d / base)

    removed = Counter(
        re.sub(r" of .*", "", det) if det.startswith(("duplicate", "near dup")) else det
        for _, dec, det in log
        if dec == "removed"
    )
    counts = Counter((s, c) for s, c, *_ in entries)
    write_attribution(out, entries, counts, removed, n32, sources)

    if args.log:
        args.log.write_text("".join(f"{r}\t{d}\t{x}\n" for r, d, x in sorted(log)))
    if args.sheets:
        args.sheets.mkdir(parents=True, exist_ok=True)
        for cls in sorted(by_class):
            for split in ("train", "test"):
                its = [(t, a) for s, c, _, t, a in entries if c == cls and s == split]
                sheet(its, args.sheets / f"{cls}.{split}.png")
        rem = defaultdict(list)
        roots = {src.label: src for src in sources}
        for spath, dec, det in log:
            if dec == "removed":
                key = re.sub(r"\W+", "_", re.sub(r" of .*| \(.*", "", det)).strip("_")
                rem[key].append(spath)
        for key, paths in rem.items():
            paths = sorted(paths)[:960]
            tiles = [Tile.from_source_path(roots, p) for p in paths]
            sheet([(t, load_rgba(t.path)) for t in tiles], args.sheets / f"removed.{key}.png")

    total32 = sum(n32.values())
    print(f"{total32} tiles of (about) 32x32; kept {len(entries)}", file=sys.stderr)
    for cls in sorted(by_class):
        tr, te = counts[("train", cls)], counts[("test", cls)]
        print(f"  {cls:20s} {tr:5d} train {te:4d} test ({te / (tr + te):.0%})", file=sys.stderr)
    for why, n in removed.most_common():
        print(f"  removed {n:5d}  {why}", file=sys.stderr)


UPSTREAM_QUOTE = [
    "* Public Domain|CC0: most of tiles, perlin.cc, perlin.h",
    "The majority of Crawl's tiles and artwork are released under the CC0 license "
    "(https://creativecommons.org/publicdomain/zero/1.0/), and new submissions are "
    "under this license unless otherwise specified. However, the licensing situation "
    "may be complex, especially for older pieces. For information regarding the "
    "licenses of our tiles and artwork, see https://github.com/crawl/tiles",
]

DEBIAN_QUOTE = (
    "* Public Domain|CC0: most of tiles.  Exact list is sketchy, please refer to\n"
    "  the rltiles project for a public domain subset that errs on the side of\n"
    "  caution where authorship of a certain tile is uncertain."
)


def write_attribution(out: Path, entries, counts, removed, n32, sources) -> None:
    classes = sorted({c for _, c, *_ in entries})
    total = len(entries)
    per_source = Counter(t.src.label for _, _, _, t, _ in entries)
    lines = [
        "# Training sprites: source and licence",
        "",
        f"{total} sprites of 32x32 pixels (RGBA) from Dungeon Crawl Stone Soup's tiles: "
        f"{per_source['']} from `source/rltiles/` of Debian's source package `{PACKAGE}` "
        f"version `{VERSION}` (upstream tarball `{ORIG}`, sha256 `{ORIG_SHA256}`)",
    ]
    exports = [s for s in sources if s.tag]
    if exports:
        lines[-1] += (
            ", and "
            + " and ".join(
                f"{per_source[s.label]} from `{s.label.split(':', 1)[1]}` of crawl/tiles" for s in exports
            )
            + f" (https://github.com/crawl/tiles, commit {CRAWL_TILES_COMMIT}: curated CC0 "
            "exports of earlier versions, drawings crawl later redrew or dropped; named "
            + ", ".join(f"`{s.tag}_*`" for s in exports)
            + " here)"
        )
    lines[-1] += (
        ". Rebuilt by `scripts/build_sprites.py`, which holds the rules that choose, classify "
        "and split them. Each file's pixels are the tile's own, converted to 8-bit RGBA with "
        "the colour of fully transparent pixels set to zero."
    )
    lines += [
        "",
        "## Licence",
        "",
        "**CC0 1.0** (public domain dedication, "
        "https://creativecommons.org/publicdomain/zero/1.0/) for every file here, as upstream's "
        "`LICENSE` (at the top of the source tree) states for the tiles:",
        "",
        "> " + UPSTREAM_QUOTE[0],
        ">",
        "> " + UPSTREAM_QUOTE[1],
        "",
        "and Debian's `debian/copyright` of the package (installed as "
        "`/usr/share/doc/crawl-common/copyright`) says:",
        "",
        "```",
        DEBIAN_QUOTE,
        "```",
        "",
    ]
    if exports:
        lines += [
            "crawl/tiles' `README.md` says of its exports:",
            "",
            "> " + CRAWL_TILES_QUOTE,
            "",
            "and the 2010 export's `README.txt`:",
            "",
            "> " + CRAWL_TILES_2010_QUOTE,
            "",
        ]
    lines += [
        "Erring on that side of caution, every tile that crawl/tiles' "
        "`TILES_UNDER_UNKNOWN_LICENSE.md` (https://github.com/crawl/tiles, commit a6ea165; "
        "copied as `scripts/crawl_tiles_TILES_UNDER_UNKNOWN_LICENSE.md`) names is left out: "
        "by file name anywhere in the tree, by path (old `dc-*` folder names included), and a "
        "listed path's file name anywhere in the same kind of folder (tiles crawl moved). "
        "Credits for the artists are in the package's `CREDITS.txt`. CC0 asks for no "
        "attribution; this list is kept so the provenance of every file can be checked.",
        "",
        "## Contents",
        "",
        f"Of {sum(n32.values())} tiles of 32x32 (and a few of 30 or 31 pixels, padded; "
        + ", ".join(f"{n32[s.label]} in {s.label.rstrip('/') or 'the package'}" for s in sources)
        + f"), kept {total}; removed:",
        "",
    ]
    for why, n in removed.most_common():
        lines.append(f"- {n} {why}")
    lines += ["", "| class | train | test |", "|---|---:|---:|"]
    for c in classes:
        lines.append(f"| {c} | {counts[('train', c)]} | {counts[('test', c)]} |")
    lines += [
        "",
        "## Files",
        "",
        "Source paths are relative to `source/rltiles/` in the package, or start with the "
        "crawl/tiles export they come from. Licence: CC0-1.0 for all.",
        "",
        "| file | source path |",
        "|---|---|",
    ]
    for split, cls, base, tile, _ in sorted(entries, key=lambda e: (e[0], e[1], e[2])):
        lines.append(f"| {split}/{cls}/{base} | {tile.source_path} |")
    (out / "ATTRIBUTION.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
