from utils.common.markdown import markdown_table


def test_markdown_table_lines_and_alignment():
    assert markdown_table(["a", "b"], [[1, None], ["x", "y z"]]) == [
        "| a | b |", "|---|---|", "| 1 | None |", "| x | y z |"]
    assert markdown_table(["name", "n"], [], align="lr") == ["| name | n |", "|---|---:|"]
