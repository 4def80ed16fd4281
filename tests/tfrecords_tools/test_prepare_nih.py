"""tfrecords_tools/prepare_nih.py and chestxray_tf/data/release.py: parallel, resumable,
safe extraction of the NIH archives and the check of the release, on tiny fake archives with
the real metadata of nih_sample."""

import io
import os
import subprocess
import sys
import tarfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from chestxray_tf.data import build, nih
from chestxray_tf.data import release as prepare_nih

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PER_ARCHIVE = 3
ARCHIVES = ("images_001.tar.gz", "images_002.tar.gz", "images_003.tar.gz")


def png_bytes(seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def write_tar(path, members):
    """members: [(name, bytes) | (name, tarfile.TarInfo)] into a .tar.gz at `path`."""
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members:
            if isinstance(content, tarfile.TarInfo):
                tar.addfile(content)
                continue
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))


@pytest.fixture()
def release(tmp_path, nih_sample_dir):
    """A downloaded release in miniature: 9 images of nih_sample in 3 archives (images/NAME.png
    as NIH packs them), the two CSVs cut to them, the two split lists."""
    root = tmp_path / "nih"
    root.mkdir()
    entries = pd.read_csv(nih_sample_dir / "Data_Entry_2017_v2020.csv")
    boxes = pd.read_csv(nih_sample_dir / "BBox_List_2017.csv")
    chosen = sorted(set(boxes["Image Index"]))[:4] + sorted(
        set(entries["Image Index"]) - set(boxes["Image Index"]))[:5]
    entries[entries["Image Index"].isin(chosen)].to_csv(root / "Data_Entry_2017_v2020.csv",
                                                          index=False)
    boxes[boxes["Image Index"].isin(chosen)].to_csv(root / "BBox_List_2017.csv", index=False)
    (root / "train_val_list.txt").write_text("\n".join(chosen[:6]) + "\n")
    (root / "test_list.txt").write_text("\n".join(chosen[6:]) + "\n")
    contents = {name: png_bytes(i) for i, name in enumerate(chosen)}
    for k, archive in enumerate(ARCHIVES):
        names = chosen[k * PER_ARCHIVE:(k + 1) * PER_ARCHIVE]
        folder = tarfile.TarInfo("images")
        folder.type = tarfile.DIRTYPE
        write_tar(root / archive, [("images", folder)]
                  + [(f"images/{n}", contents[n]) for n in names])
    return root, contents


def lines(root, expected=9, num_workers=1):
    out = []
    code = prepare_nih.prepare(str(root), num_workers, expected, log=out.append)
    return code, out


def test_extracts_checks_and_names_the_next_command(release):
    root, contents = release
    code, out = lines(root)
    assert code == 0, out
    for name, content in contents.items():
        assert (root / "images" / name).read_bytes() == content
    assert out[-1].strip().startswith(f"python -m tfrecords_tools.build_nih --nih_dir {root} ")
    assert "ready: 9 images" in out[-2]
    for archive in ARCHIVES:
        assert prepare_nih.is_extracted(str(root), archive)
    # What build_nih reads: the metadata files and every image.
    sources = build.find_source_files(str(root))
    assert sources.bbox and sources.split_lists
    assert sorted(nih.find_images(str(root))) == sorted(contents)
    # A rerun extracts nothing: every archive is done, even one deleted since.
    os.remove(root / ARCHIVES[0])
    code, out = lines(root)
    assert code == 0 and not any(line.startswith("extracting") for line in out)


def test_an_interrupted_extraction_is_redone_and_keeps_its_whole_files(release, monkeypatch):
    root, contents = release
    lines(root)
    # As if images_002 were killed mid-way: no marker, one file missing, one half-written part.
    os.remove(prepare_nih.marker_path(str(root), ARCHIVES[1]))
    lost, kept = list(contents)[3], list(contents)[4]  # both in images_002
    os.remove(root / "images" / lost)
    (root / "images" / f"{lost}.part-{ARCHIVES[1]}").write_bytes(contents[lost][:10])
    extracted = []
    real = prepare_nih.extract_archive
    monkeypatch.setattr(prepare_nih, "extract_archive",
                        lambda d, a: extracted.append(a) or real(d, a))
    code, out = lines(root)
    assert code == 0, out
    assert extracted == [ARCHIVES[1]]
    assert (root / "images" / lost).read_bytes() == contents[lost]
    assert (root / "images" / kept).read_bytes() == contents[kept]
    assert not list((root / "images").glob("*.part-*"))
    # An archive downloaded again (another size / time) is extracted again.
    os.utime(root / ARCHIVES[2], (1, 1))
    extracted.clear()
    assert lines(root)[0] == 0 and extracted == [ARCHIVES[2]]


def test_a_user_file_that_differs_is_never_overwritten(release):
    root, contents = release
    (root / "images").mkdir()
    mine = list(contents)[0]  # in images_001
    (root / "images" / mine).write_bytes(b"my own edit")
    code, out = lines(root)
    assert code == 1
    assert (root / "images" / mine).read_bytes() == b"my own edit"
    [message] = [line for line in out if line.startswith(ARCHIVES[0])]
    assert str(root / "images" / mine) in message and "never overwritten" in message
    assert not prepare_nih.is_extracted(str(root), ARCHIVES[0])
    assert prepare_nih.is_extracted(str(root), ARCHIVES[1])  # the others went on
    assert "not ready: 1 archives failed" in out[-1]


@pytest.mark.parametrize("member", ["../evil.png", "/tmp/evil.png", "images/../../evil.png",
                                    "link", "C:/evil.png"])
def test_unsafe_members_are_refused_naming_the_archive(tmp_path, member):
    root = tmp_path / "nih"
    root.mkdir()
    if member == "link":
        info = tarfile.TarInfo("images/link.png")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        entries = [("images/ok.png", b"ok"), (member, info)]
    else:
        entries = [("images/ok.png", b"ok"), (member, b"evil")]
    write_tar(root / "images_007.tar.gz", entries)
    with pytest.raises(prepare_nih.ArchiveError, match=r"^images_007.tar.gz: member .* refused"):
        prepare_nih.extract_archive(str(root), "images_007.tar.gz")
    assert not list(tmp_path.rglob("evil.png")) and not (root / "images" / "link.png").exists()
    assert not prepare_nih.is_extracted(str(root), "images_007.tar.gz")


def test_missing_files_and_images_are_named(release):
    root, contents = release
    os.remove(root / "test_list.txt")
    os.remove(root / ARCHIVES[2])
    code, out = lines(root, expected=9)
    assert code == 1
    text = "\n".join(out)
    assert f"missing in {root}: test_list.txt" in text
    absent = list(contents)[6:]  # the images of images_003
    listed = [n for n in pd.read_csv(root / "Data_Entry_2017_v2020.csv")["Image Index"]
              if n in absent]
    assert f"3 images of the Data_Entry file are not under {root}/images/: " \
           f"{', '.join(listed)}" in text
    assert "6 PNGs found, 9 expected; archives not in" in text and "images_003.tar.gz" in text
    (root / "Data_Entry_2017_v2020.csv").write_text("Image Index\nnot-an-image\n")
    code, out = lines(root, expected=6)
    assert code == 1 and out[-1].startswith("not ready: ") and "Data_Entry" in out[-1]
    corrupt = root / "images_009.tar.gz"
    corrupt.write_bytes(b"not gzip")
    code, out = lines(root, expected=6)
    assert code == 1 and any("images_009.tar.gz: cannot be read" in line for line in out)


def test_cli_in_parallel(release):
    root, _ = release
    result = subprocess.run(
        [sys.executable, "-m", "tfrecords_tools.prepare_nih", f"--nih_dir={root}",
         "--num_workers=2", "--expected_images=9"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert "extracting 3 archives" in result.stdout and "2 at a time" in result.stdout
    assert "python -m tfrecords_tools.build_nih" in result.stdout
    assert len(list((root / "images").glob("*.png"))) == 9
