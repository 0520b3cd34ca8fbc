"""Clip discovery: files, folders, globs, manifests, image sequences, hidden/temp files, stable unique ids."""

import pytest

from pipeline.discover import DiscoveryError, clip_id, discover


def _touch(p, data=b"x"):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "footage"
    for rel in ["a/take1.mp4", "b/take1.mp4", "b/c/shot.MOV", "x.mkv", "y.webm", "z.avi", "w.m4v", "v.mxf"]:
        _touch(root / rel)
    for rel in [
        ".hidden.mp4",
        "a/~$lock.mp4",
        "a/part.mp4.part",
        "a/dl.mp4.crdownload",
        "a/._take1.mp4",
        "notes.txt.bak",
        "a/take1.mp4~",
        ".cache/inside.mp4",
        "readme.md",
    ]:
        _touch(root / rel)
    for i in range(3):
        _touch(root / "seq" / f"frame_{i:04d}.png")
    _touch(root / "single" / "poster.jpg")  # one image is not a sequence
    return root


def test_folder_recursive_with_sequences_and_filters(tree):
    clips = discover([str(tree)])
    rel = sorted(str(c.source.relative_to(tree)) for c in clips)
    assert rel == sorted(
        ["a/take1.mp4", "b/take1.mp4", "b/c/shot.MOV", "x.mkv", "y.webm", "z.avi", "w.m4v", "v.mxf", "seq"]
    )
    kinds = {c.source.name: c.kind for c in clips}
    assert kinds["seq"] == "images" and kinds["x.mkv"] == "video"


def test_ids_unique_for_same_names_and_stable(tree):
    clips = discover([str(tree)])
    ids = [c.id for c in clips]
    assert len(set(ids)) == len(ids)
    take1 = [c.id for c in clips if c.source.name == "take1.mp4"]
    assert len(take1) == 2 and all(i.startswith("take1-") for i in take1)
    assert [c.id for c in discover([str(tree)])] == ids  # stable across runs
    assert clip_id(tree / "a" / "take1.mp4", tree) in take1


def test_ids_do_not_depend_on_the_mount_point(tree, tmp_path):
    """Workers that mount the footage at different places agree on clip ids (and so on output folders)."""
    other = tmp_path / "mnt" / "nas"
    other.mkdir(parents=True)
    (other / tree.name).symlink_to(tree)
    here = {c.source.relative_to(tree).as_posix(): c.id for c in discover([str(tree)])}
    # resolve() would follow the link back to `tree`: compare the ids computed from the un-resolved paths
    there = {rel: clip_id(other / tree.name / rel, other / tree.name) for rel in here}
    assert there == here


def test_glob_manifest_and_csv(tree, tmp_path):
    g = discover([str(tree / "**" / "*.mp4")])
    assert sorted(c.source.name for c in g) == ["take1.mp4", "take1.mp4"]
    m = tmp_path / "list.txt"
    m.write_text(f"# shots\n{tree / 'x.mkv'}\n\nfootage/y.webm\n")
    assert [c.source.name for c in discover([str(m)])] == ["x.mkv", "y.webm"]
    c = tmp_path / "list.csv"
    c.write_text("path,notes\nfootage/z.avi,hero\nfootage/seq,frames\n")
    assert [(x.source.name, x.kind) for x in discover([str(c)])] == [("z.avi", "video"), ("seq", "images")]
    bad = tmp_path / "bad.csv"
    bad.write_text("file\nx.mkv\n")
    with pytest.raises(DiscoveryError, match="'path' column"):
        discover([str(bad)])


def test_dedup_and_errors(tree):
    clips = discover([str(tree / "x.mkv"), str(tree), str(tree / "x.mkv")])
    assert len([c for c in clips if c.source.name == "x.mkv"]) == 1
    with pytest.raises(DiscoveryError, match="no such file"):
        discover([str(tree / "nope.mp4")])
    with pytest.raises(DiscoveryError, match="matches no"):
        discover([str(tree / "*.nothing")])


def test_image_folder_given_directly(tree):
    clips = discover([str(tree / "seq")])
    assert len(clips) == 1 and clips[0].kind == "images"
