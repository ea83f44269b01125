#!/usr/bin/env python3
"""Rebuild assets/textures from Debian's Minetest packages, reproducibly.

    python3 scripts/build_corpus.py [--out assets/textures] [--work /tmp/tarflow-corpus]

Downloads the packages below with `apt-get download` (no install; run `apt-get update` first),
unpacks them with `dpkg-deb -x`, keeps every 16x16 PNG that is game art (not GUI, particles,
overlays or test patterns), drops exact duplicates and near-empty images, sorts each into a class
by its file name (the rules below, checked by looking at every class's contact sheet), splits
each class into `train/` and `test/` by a fixed hash of the image's *family* (so that e.g. the
on/off or colour variants of one block never straddle the split), and writes ATTRIBUTION.md with
each file's package, original path, licence and copyright holders, read from the package's DEP-5
`copyright` file.

Needs Pillow (`pip install pillow`). The held-out benchmark packages (minetest-mod-moreblocks,
-moreores, -ethereal, -nether) are never downloaded: see HELD_OUT.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

from PIL import Image

PACKAGES = [
    "minetest-data",
    "minetest-mod-3d-armor",
    "minetest-mod-basic-materials",
    "minetest-mod-currency",
    "minetest-mod-homedecor",
    "minetest-mod-lucky-block",
    "minetest-mod-maidroid",
    "minetest-mod-mesecons",
    "minetest-mod-mobs-redo",
    "minetest-mod-pipeworks",
    "minetest-mod-protector",
    "minetest-mod-quartz",
    "minetest-mod-throwing-arrows",
    "minetest-mod-throwing",
    "minetest-mod-unifieddyes",
    "minetest-mod-xdecor",
]

# The team's held-out benchmark: never used for training or tuning.
HELD_OUT = {
    "minetest-mod-moreblocks",
    "minetest-mod-moreores",
    "minetest-mod-ethereal",
    "minetest-mod-nether",
}

# Whole trees that are not game art.
SKIP_DIRS = ("/games/devtest/", "/textures/base/pack/", "/unified_inventory/", "/worldedit")

# File names (without .png) that are not textures a game would ask for: GUI, particles, overlays,
# masks, placeholders, inventory duplicates of a block's own faces.
SKIP_NAME = re.compile(
    r"(overlay|particle|smoke|_blast|_boom|footprint|transparent|_trans$|crack|_hud|gui|formspec|"
    r"_bg$|_fg$|invisible|blank|^ui_|glare|_edges|layout|wieldhand|noentry|arrows|mask|_wield$|"
    r"hidden_segment|_empty$|^egg_pattern|selection|protector_display|protector_logo|lightbox|"
    r"fire_bg|fire_fg|_cord$|_legs_|fiber$|_split$|stairside|pos[12]$|_blanktile|mailbox_blank)"
)

# Classes, in order of precedence: the first rule whose pattern matches the file name wins.
CLASS_RULES: list[tuple[str, str]] = [
    ("machines", r"^maidroid_tool_|_oven_|oven_steel|dishwasher|washing|dryer"),
    ("items", r"^(bishop|king|knight|pawn|queen|rook)_|lucky_block|xdecor_painting|spool|_wire$"),
    ("light", r"default_lava_(source|flowing)"),
    ("ground", r"water_flowing|river_water"),
    ("armor", r"3d_armor_inv_|shields_inv_shield|3d_armor_stand"),
    ("tools", r"_tool_|tool_.*(axe|pick|shovel|sword|hoe)|throwing_bow|screwdriver|shears|"
              r"bugnet|flint_steel|binoculars|mapping_kit|magic_lasso|xdecor_hammer|airbrush|"
              r"craftguide_(mesepick|steelpick)|paint_roller|_key$|key_skeleton|_net$|knife"),
    ("ore", r"mineral_|_lump$|quartz_ore|_crystal|diamond$|mese_crystal|obsidian_shard|_ingot$|"
            r"default_flint$|energy_crystal|silicon|quartz_crystal"),
    ("light", r"lightstone|meselamp|glowlight|lamp|lantern|light_source|torch|candle|fire_basic|"
              r"fake_fire|embers|lava$|bucket_lava|_lightbox"),
    ("glass", r"glass|window|skylight|xpanes|fishtank|ice$|packed_ice|obsidian_glass"),
    ("fabric", r"wool_|curtain|rug_|cushion|towel|terrycloth|tatami|beds_|bed_bottom|deckchair|"
               r"sofa|blanket|farming_string|farming_cotton$|mobs_leather|saddle|windowblind|"
               r"plastic_sheet|rope"),
    ("foliage", r"leaves|needles|sapling|flowers_|_pot$|grass_[1-5]|junglegrass|dry_shrub|fern|"
                r"marram|farming_(wheat|cotton)_|cotton_wild|papyrus|kelp|coral_(brown|cyan|green|"
                r"orange|pink)|bush_stem|cactus|shrubbery|ivy|bonsai|blinky_plant|seedling|"
                r"default_moss$|blueberr|waterlily|mushroom|butterfl|firefl|bamboo|hive"),
    ("ground", r"dirt|_sand$|sand_soil|farming_soil|gravel|snow|_litter|permafrost|clay$|"
               r"default_grass$|grass_side|dry_grass$|moss_side|silver_sand$|default_sand$|"
               r"coral_skeleton|_water$|water_source|river_water|default_cloud"),
    ("wood", r"wood|tree|planks|bookshelf|ladder|chest_|barrel|fence_privacy|sticks|default_stick|"
             r"hardwood|trapdoor$|trapdoor_side|doors_wood|cabinet|nightstand|wardrobe|drawer|"
             r"shelf|desk|table|itemframe|picture_frame|cardbox|barter|shop_|mailbox|chessboard|"
             r"worktable|enchantment|multishelf|painting|swing|coffeetable|dvdcd"),
    ("metal", r"steel|iron|bronze|copper|tin_block|gold|brass|metal|_block$.*|cast_iron|grate|"
              r"chain|bar$|bars|rail|carts_|rusty|_wire|barbed|pipeworks_(black|blue|green|red|"
              r"white|yellow)|tube|tank|trashcan|inbox|padlock|spool|_strip$|_bar$"),
    ("machines", r"jeija_|mesecons_|pipeworks_|receiver_|piston|delayer|detector|turbine|"
                 r"noteblock|commandblock|microcontroller|solar|power_plant|fpga|dryer|washing|"
                 r"dishwasher|oven|stereo|television|speaker|vcr|dvd_player|plasmascreen|"
                 r"telephone|radiator|fan_|furnace|maidroid_tool|autocrafter|deployer|"
                 r"nodebreaker|filter|mob_spawner|tnt_(side|top|bottom)|lucky_block|"
                 r"motor|heating_element|_ic$|clock|coffeemaker|lever|switch|button|"
                 r"pressure_plate|pressure_stone|pressure_wood|trampoline|cauldron|enderchest"),
    ("stone", r"stone|cobble|brick|obsidian|marble|granite|quartz|concrete|cement|adobe|tile|"
              r"terracotta|roof|shingles|brobble|tar$|bones_|moonbrick|rune|coalstone|"
              r"chimney|_block$"),
    ("items", r"."),
]
_CLASS_RE = [(c, re.compile(p)) for c, p in CLASS_RULES]

# Hand corrections where a name misleads the rules (checked on the contact sheets).
OVERRIDES = {
    "default_coral_skeleton": "ground",
    "default_mese_block": "ore",
    "default_diamond_block": "ore",
    "default_coal_block": "ore",
    "default_mese_post_light_side": "light",
    "default_mese_post_light_side_dark": "light",
    "default_glass_detail": "glass",
    "default_bookshelf_slot": "wood",
    "vessels_shelf": "wood",
    "vessels_shelf_slot": "wood",
    "default_paper": "items",
    "default_book": "items",
    "default_book_written": "items",
    "craftguide_book": "items",
    "xdecor_book_open": "items",
    "bucket": "items",
    "bucket_water": "items",
    "bucket_river_water": "items",
    "bucket_lava": "items",
    "vessels_steel_bottle": "items",
    "homedecor_3d_bottle_metal_bright": "items",
    "default_steel_block": "metal",
    "default_copper_block": "metal",
    "default_bronze_block": "metal",
    "default_gold_block": "metal",
    "default_tin_block": "metal",
    "basic_materials_brass_block": "metal",
    "basic_materials_cement_block": "stone",
    "basic_materials_concrete_block": "stone",
    "quartz_block": "stone",
    "xdecor_iron_lightbox": "light",
    "farming_straw": "ground",
    "tnt_gunpowder_straight": "items",
    "tnt_gunpowder_curved": "items",
    "tnt_gunpowder_crossing": "items",
    "tnt_gunpowder_t_junction": "items",
    "xdecor_cobweb": "items",
    "homedecor_cobweb": "items",
    "default_cactus_top": "foliage",
    "default_cactus_side": "foliage",
    "xdecor_cactusbrick": "stone",
    "default_tree_top": "wood",
    "worktable_anvil": "tools",
    "worktable_saw": "tools",
}

# Family of an image for the split: variants that differ by state, number or colour stay together.
_COLOURS = (
    "black|blue|brown|cyan|dark_green|dark_grey|darkgray|green|grey|gray|magenta|orange|pink|red|"
    "violet|white|yellow"
)
_FAMILY = [
    re.compile(r"_(on|off|active|open|closed|empty|idle|wet|burning|brk|pwr|sticky|bump|dark)(?=_|$)"),
    re.compile(rf"_({_COLOURS})(?=_|$)"),
    re.compile(r"_?\d+(?=_|$)"),
    re.compile(r"_(top|bottom|side|sides|front|back|left|right|lr|tb|fb|ends|edges)(?=_|$)"),
    re.compile(r"_(admin|bronze|cactus|crystal|diamond|gold|mithril|steel|wood|stone|mese|oak|"
               r"mahogany|enhanced)(?=_|$)"),
]


def family(name: str) -> str:
    f = name
    for pat in _FAMILY:
        f = pat.sub("", f)
    return f


def classify(name: str) -> str:
    if name in OVERRIDES:
        return OVERRIDES[name]
    for cls, rx in _CLASS_RE:
        if rx.search(name):
            return cls
    return "items"


def run(cmd: list[str], cwd: Path | None = None) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def fetch(work: Path) -> dict[str, Path]:
    """Download and unpack each package; returns package -> unpacked root."""
    debs = work / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    roots = {}
    for pkg in PACKAGES:
        assert pkg not in HELD_OUT, pkg
        found = sorted(debs.glob(f"{pkg}_*.deb"))
        if not found:
            run(["apt-get", "download", pkg], cwd=debs)
            found = sorted(debs.glob(f"{pkg}_*.deb"))
        if not found:
            sys.exit(f"apt-get download {pkg} gave no .deb (run apt-get update first)")
        root = work / "x" / pkg
        if not root.exists():
            root.mkdir(parents=True)
            run(["dpkg-deb", "-x", str(found[-1]), str(root)])
        roots[pkg] = root
    return roots


def package_version(work: Path, pkg: str) -> str:
    deb = sorted((work / "debs").glob(f"{pkg}_*.deb"))[-1]
    return deb.name.split("_")[1].replace("%3a", ":")


def parse_dep5(path: Path) -> list[tuple[list[str], str, str]]:
    """(patterns, copyright holders, licence) of each Files stanza, in file order."""
    stanzas, cur, field = [], {}, None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines() + [""]:
        if not line.strip():
            if "Files" in cur:
                stanzas.append((
                    cur["Files"].split(),
                    " ".join(cur.get("Copyright", "").split()),
                    cur.get("License", "").split("\n")[0].strip(),
                ))
            cur, field = {}, None
            continue
        if line[0] in " \t":
            if field:
                cur[field] += "\n" + line.strip()
            continue
        key, _, value = line.partition(":")
        field = key.strip()
        cur[field] = value.strip()
    return stanzas


def source_path(pkg: str, installed: str) -> str:
    """The path of an installed file inside the package's source tree (as DEP-5 names it)."""
    if pkg == "minetest-data":
        m = re.search(r"games/minetest_game/(.*)", installed)
        return "mtg/" + m.group(1) if m else installed
    m = re.search(r"/mods/[^/]+/(.*)", installed)
    return m.group(1) if m else installed


def licence_of(stanzas, src: str) -> tuple[str, str]:
    holders, lic = "", ""
    for pats, cr, li in stanzas:  # DEP-5: the last matching stanza wins
        if any(fnmatch.fnmatchcase(src, p) for p in pats):
            holders, lic = cr, li
    return holders, lic


def usable(img: Image.Image) -> bool:
    """At least 16 opaque pixels in at least 2 colours (not a flat swatch or an empty mask)."""
    rgba = img.convert("RGBA").tobytes()
    px = [rgba[i : i + 4] for i in range(0, len(rgba), 4)]
    opaque = [p for p in px if p[3] >= 128]
    return len(opaque) >= 16 and len(set(opaque)) >= 2


def first_frame(img: Image.Image) -> Image.Image | None:
    """A 16x16 image, or the first frame of a vertical 16-pixel animation strip."""
    w, h = img.size
    if w == 16 and h == 16:
        return img
    if w == 16 and h > 16 and h % 16 == 0:
        return img.convert("RGBA").crop((0, 0, 16, 16))
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("assets/textures"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/tarflow-corpus"))
    ap.add_argument("--test-share", type=float, default=0.15)
    args = ap.parse_args()
    roots = fetch(args.work)

    seen: dict[bytes, str] = {}
    chosen = []  # (class, name, pkg, installed path, image bytes)
    skipped = Counter()
    for pkg, root in roots.items():
        stanzas = parse_dep5(root / "usr/share/doc" / pkg / "copyright")
        for dirpath, _, files in sorted(os.walk(root)):
            rel_dir = "/" + os.path.relpath(dirpath, root) + "/"
            if any(s in rel_dir for s in SKIP_DIRS):
                continue
            for f in sorted(files):
                if not f.endswith(".png"):
                    continue
                p = Path(dirpath) / f
                try:
                    img = Image.open(p)
                    img.load()
                except Exception:
                    skipped["unreadable"] += 1
                    continue
                strip = img.size != (16, 16)
                img = first_frame(img)
                if img is None:
                    skipped["not 16x16"] += 1
                    continue
                name = f[:-4].removesuffix("_animated")
                if SKIP_NAME.search(name):
                    skipped["not game art (name)"] += 1
                    continue
                if not usable(img):
                    skipped["near-empty or flat"] += 1
                    continue
                key = img.convert("RGBA").tobytes()
                if key in seen:
                    skipped["duplicate"] += 1
                    continue
                seen[key] = name
                installed = os.path.relpath(p, root)
                holders, lic = licence_of(stanzas, source_path(pkg, installed))
                if strip:  # the note travels in the path column of ATTRIBUTION.md
                    installed += " (first frame of the animation strip)"
                chosen.append((classify(name), name, pkg, installed, img if strip else p, holders,
                               lic))

    # Unique output names: the original name unless two packages ship the same one.
    names = Counter(c[1] for c in chosen)
    if args.out.exists():
        for sub in ("train", "test"):
            shutil.rmtree(args.out / sub, ignore_errors=True)
    by_class = defaultdict(list)
    taken = set()
    for cls, name, pkg, installed, p, holders, lic in chosen:
        out_name = name if names[name] == 1 else f"{name}__{pkg.removeprefix('minetest-')}"
        n = 2
        while out_name in taken:  # the same name twice in one package (a modpack)
            out_name = f"{name}__{pkg.removeprefix('minetest-')}{n}"
            n += 1
        taken.add(out_name)
        by_class[cls].append((out_name, name, pkg, installed, p, holders, lic))

    rows = []
    for cls in sorted(by_class):
        items = sorted(by_class[cls])
        fams = sorted({family(i[1]) for i in items},
                      key=lambda f: hashlib.sha256(f"{cls}/{f}".encode()).hexdigest())
        fam_size = Counter(family(i[1]) for i in items)
        target = max(2, round(args.test_share * len(items)))
        test_fams, n = set(), 0
        for f in fams:  # whole families, in hash order, until the share is reached
            if n >= target:
                break
            if n + fam_size[f] > target + 3 and n > 0:
                continue
            test_fams.add(f)
            n += fam_size[f]
        for out_name, name, pkg, installed, p, holders, lic in items:
            split = "test" if family(name) in test_fams else "train"
            dst = args.out / split / cls / f"{out_name}.png"
            dst.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(p, Path):
                shutil.copyfile(p, dst)
            else:
                p.save(dst)
            rows.append((split, cls, out_name, pkg, installed, lic, holders))

    write_attribution(args, roots, rows, skipped)
    counts = Counter((r[0], r[1]) for r in rows)
    for cls in sorted(by_class):
        print(f"{cls:<10} train {counts[('train', cls)]:>4}  test {counts[('test', cls)]:>4}")
    print(f"total {len(rows)} (skipped: {dict(skipped)})")


def write_attribution(args, roots, rows, skipped) -> None:
    lic_count = Counter(r[5] for r in rows)
    lines = [
        "# Training textures: sources and licences",
        "",
        f"{len(rows)} textures of 16x16 pixels, unchanged copies of files from Debian's Minetest "
        "packages, rebuilt by `scripts/build_corpus.py` (which lists the packages, the rules that "
        "choose and classify the files, and the fixed train/test split). Each file's licence and "
        "copyright holders below come from its package's `copyright` file (DEP-5, the last "
        "matching stanza), where the full licence texts are.",
        "",
        "Licences: " + ", ".join(f"{k} ({v} files)" for k, v in lic_count.most_common()) + ".",
        "",
        "**Share-alike.** Most files are CC BY-SA (3.0 or 4.0): this attribution and the "
        "share-alike terms travel with the files *and with models trained on them*, including the "
        "bundled demo model and the textures it generates. Two files of `minetest-mod-unifieddyes` "
        "are GPL-2+ and seven of `minetest-mod-throwing-arrows` MPL-2.0: a project that cannot "
        "take those terms drops the two packages from `PACKAGES` and retrains.",
        "",
        "Packages (Debian version):",
        "",
    ]
    for pkg in roots:
        lines.append(f"- `{pkg}` {package_version(args.work, pkg)}")
    lines += [
        "",
        "Never used here: " + ", ".join(f"`{p}`" for p in sorted(HELD_OUT))
        + " (the team's held-out benchmark).",
        "",
        "| file | package | original path | licence | copyright |",
        "|---|---|---|---|---|",
    ]
    for split, cls, out_name, pkg, installed, lic, holders in sorted(rows):
        lines.append(f"| {split}/{cls}/{out_name}.png | {pkg} | {installed} | {lic} | {holders} |")
    (args.out / "ATTRIBUTION.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    split_lines = sorted(f"{cls}/{out_name}.png" for split, cls, out_name, *_ in rows
                         if split == "test")
    (args.out / "TEST_SPLIT.txt").write_text(
        "# The fixed held-out split (assets/textures/test), by scripts/build_corpus.py\n"
        + "\n".join(split_lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
