from fedmedlora.yaml_lines import line_of, node_lines

TEXT = """\
name: x
data:
  sites:
    - name: a
      train: [one.jsonl,
              two.jsonl]
"""


def test_every_key_and_item_has_its_line():
    lines = node_lines(TEXT)
    assert lines[("name",)] == 1
    assert lines[("data", "sites", 0)] == 4
    assert lines[("data", "sites", 0, "train")] == 5
    assert lines[("data", "sites", 0, "train", 1)] == 6
    # pydantic adds union member names; a missing key falls back to its parent
    assert line_of(lines, ("data", "sites", 0, "train", "list[str]", 0)) == 5
    assert line_of(lines, ("data", "sites", 0, "test")) == 4
    assert line_of(lines, ("elsewhere",)) == 0
    assert node_lines("a: [") == {}
