"""Sources list every item they are given, keyed by its file where one exists: unlisted files,
repeated caption lines, text that is not UTF-8 and dataset rows all end as items that name their file."""

import json

import pytest
from PIL import Image

from unitok.data.sources import DatasetSource, FolderSource, SourceError, TextSource

LATIN1 = "café".encode("latin-1")  # b"caf\xe9": not UTF-8


def image_folder(folder, names):
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(folder / name)
    return folder


def jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def items(source):
    return [(item.key, item.caption, item.caption_problem) for item in source]


def test_a_manifest_without_lines_for_some_files_keeps_them_as_items_that_say_why(tmp_path):
    names = [f"img{i:02d}.png" for i in range(20)]
    folder = image_folder(tmp_path / "photos", names)
    jsonl(folder / "captions.jsonl", [{"file": name, "caption": f"photo {name}"} for name in names[:16]])
    listed = items(FolderSource(folder))
    assert len(listed) == 20 and [key for key, _, _ in listed] == names
    assert listed[16:] == [(name, None, "captions.jsonl has no line for it") for name in names[16:]]
    manifest = jsonl(tmp_path / "elsewhere.jsonl", [{"file": "img03.png", "caption": "three"}])
    given = items(FolderSource(folder, manifest))
    assert given[0] == ("img03.png", "three", None) and len(given) == 20
    assert given[1] == ("img00.png", None, "elsewhere.jsonl has no line for it")


def test_splits_that_share_a_folder_take_only_their_manifests_lines(tmp_path):
    folder = image_folder(tmp_path / "photos", ["a.png", "b.png", "c.png"])
    train = jsonl(folder / "train.jsonl", [{"file": "./a.png", "caption": "a"}, {"file": "b.png", "caption": "b"}])
    assert [item.key for item in FolderSource(folder, train, every_file=False)] == ["./a.png", "b.png"]
    assert [item.key for item in FolderSource(folder, train)] == ["./a.png", "b.png", "c.png"], "./a.png lists a.png"


def test_repeated_caption_lines_are_one_item_each_with_distinct_keys(tmp_path):
    folder = image_folder(tmp_path / "photos", ["a.png", "sub/b.png"])
    lines = [("a.png", "first"), ("sub/b.png", "b"), ("a.png", "second"), ("a.png", "third")]
    jsonl(folder / "metadata.jsonl", [{"file_name": name, "text": text} for name, text in lines])
    source = FolderSource(folder)
    assert [(k, c) for k, c, _ in items(source)] == [("a.png", "first"), ("sub/b.png", "b"), ("a.png#2", "second"),
                                                      ("a.png#3", "third")]
    assert source[2].media == folder / "a.png"


@pytest.mark.parametrize("name, head, line", [("captions.jsonl", '{"file": "a.png", "caption": "a"}\n', 2),
                                              ("metadata.csv", "file_name,caption\na.png,a\n", 3)])
def test_a_manifest_that_is_not_utf8_is_refused_naming_its_line(tmp_path, name, head, line):
    folder = image_folder(tmp_path / "photos", ["a.png", "b.png"])
    tail = (b'{"file": "b.png", "caption": "' + LATIN1 + b'"}\n') if name.endswith(".jsonl") else b"b.png," + LATIN1
    (folder / name).write_bytes(head.encode() + tail)
    with pytest.raises(SourceError, match=rf"{name}:{line}: not UTF-8 text; re-save the file as UTF-8$"):
        FolderSource(folder)


def test_a_sidecar_caption_that_is_not_utf8_is_an_item_without_caption_that_says_why(tmp_path):
    folder = image_folder(tmp_path / "photos", ["a.png", "b.png", "c.png"])
    (folder / "a.txt").write_text("a photo\n")
    (folder / "b.txt").write_bytes(LATIN1)
    assert items(FolderSource(folder)) == [("a.png", "a photo", None),
                                           ("b.png", None, "b.txt is not UTF-8 text: byte 3"), ("c.png", None, None)]


def test_corpus_lines_are_keyed_by_line_number_and_a_line_that_is_not_utf8_is_a_bad_item(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"a red 7\n\n" + LATIN1 + b"\nthe digit 3\n")
    assert items(TextSource(corpus)) == [("corpus.txt:1", "a red 7", None),
                                         ("corpus.txt:3", None, "the line is not UTF-8 text: byte 3"),
                                         ("corpus.txt:4", "the digit 3", None)]
    table = jsonl(tmp_path / "corpus.jsonl", [{"text": "one"}, {"text": "two"}])
    assert [item.key for item in TextSource(table)] == ["corpus.jsonl:1", "corpus.jsonl:2"]


def test_dataset_rows_are_keyed_by_their_file_relative_to_the_dataset_folder(tmp_path):
    folder = image_folder(tmp_path / "photos", ["a.png", "sub/b.png"])
    jsonl(folder / "metadata.jsonl", [{"file_name": name, "caption": name[-5]} for name in ("a.png", "sub/b.png")])
    by_builder = DatasetSource("imagefolder", data_dir=str(folder))
    assert sorted(item.key for item in by_builder) == ["a.png", "sub/b.png"]
    assert sorted(item.key for item in DatasetSource(str(folder))) == ["a.png", "sub/b.png"]
    (folder / "items.csv").write_text("path,caption\nsub/b.png,b\na.png,a\nsub/b.png,b again\n")
    by_path = DatasetSource("csv", data_dir=str(folder), data_files="items.csv", media_column="path")
    assert [(item.key, item.caption) for item in by_path] == [("sub/b.png", "b"), ("a.png", "a"),
                                                               ("sub/b.png#2", "b again")]
    assert by_path[1].media == folder / "a.png"
    (tmp_path / "absolute.csv").write_text(f"path,caption\n{folder / 'sub' / 'b.png'},b\n")
    elsewhere = DatasetSource("csv", data_files=str(tmp_path / "absolute.csv"), media_column="path")
    assert [item.key for item in elsewhere] == ["b.png"], "a file outside the dataset's folder: its name"
