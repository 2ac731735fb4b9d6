"""A DataFrame's columns and a matplotlib figure's data, beside their text, HTML and PNG: the
Python kernel's TABLE_MIME and CHART_MIME (runtime/rich_output.py), read through agentcell's SDK
(`Result.table`, `Result.chart`) and E2B's code-interpreter SDK (`Result.data`, `Result.chart` as
its typed charts). Real server, real sandbox, Debian's pandas and matplotlib."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from e2b_code_interpreter import Sandbox as E2bSandbox
from e2b_code_interpreter.charts import (
    BarChart,
    BoxAndWhiskerChart,
    ChartType,
    LineChart,
    PieChart,
    ScaleType,
    SuperChart,
)

from agentcell.client import Result, Sandbox
from tests.conftest import ServerProcess

PLOT = "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\n"


@pytest.fixture(scope="module")
def sbx(shared_server: ServerProcess) -> Iterator[Sandbox]:
    with Sandbox.create(api_url=shared_server.url, timeout_s=600) as sandbox:
        yield sandbox


def shown(sbx: Sandbox, code: str) -> Result:
    """The one result `code` displays (its figure, or its last value)."""
    execution = sbx.run_code(code, timeout_s=60)
    assert execution.error is None and len(execution.results) == 1, execution
    return execution.results[0]


def chart(sbx: Sandbox, code: str) -> dict[str, Any]:
    result = shown(sbx, PLOT + code + "\nplt.show()")
    assert result.png and result.chart is not None, result.formats()
    return result.chart


def test_a_dataframe_has_its_columns_beside_its_html(sbx: Sandbox) -> None:
    code = (
        "import pandas as pd\n"
        "when = pd.to_datetime(['2024-05-01', None])\n"
        "pd.DataFrame({'name': ['a', 'b'], 'score': [1.5, float('nan')], 7: when})"
    )
    frame = shown(sbx, code)
    assert frame.html and "<table" in frame.html and frame.text
    assert frame.table == {
        "name": ["a", "b"],
        "score": [1.5, None],  # (JSON has no NaN)
        "7": ["2024-05-01T00:00:00", None],
    }


def test_a_frame_too_large_keeps_its_text_without_its_columns(sbx: Sandbox) -> None:
    big = shown(sbx, "import pandas as pd\npd.DataFrame({'n': range(60_000)})")
    assert big.table is None and big.text and "60000 rows" in big.text


def test_a_line_chart_has_its_series_labels_units_and_scales(sbx: Sandbox) -> None:
    line = chart(
        sbx,
        "ax.plot([0, 1, 2], [1, 4, 9], label='squares')\nax.plot([0, 1, 2], [1, 2, 3])\n"
        "ax.set_title('Growth')\nax.set_xlabel('Time (s)')\nax.set_ylabel('Size [MB]')\nax.set_yscale('log')",
    )
    assert (line["type"], line["title"]) == ("line", "Growth")
    assert (line["x_label"], line["x_unit"], line["y_label"], line["y_unit"]) == (
        "Time (s)",
        "s",
        "Size [MB]",
        "MB",
    )
    assert (line["x_scale"], line["y_scale"]) == ("linear", "log")
    assert [(e["label"], e["points"]) for e in line["elements"]] == [
        ("squares", [[0, 1], [1, 4], [2, 9]]),
        ("Line 1", [[0, 1], [1, 2], [2, 3]]),
    ]
    assert len(line["x_ticks"]) == len(line["x_tick_labels"]) > 1


def test_dates_and_categories_are_named_as_such(sbx: Sandbox) -> None:
    dated = chart(sbx, "import datetime as dt\nax.plot([dt.date(2024, 1, 1), dt.date(2024, 1, 3)], [5, 6])")
    assert dated["x_scale"] == "datetime"
    assert dated["elements"][0]["points"] == [["2024-01-01", 5], ["2024-01-03", 6]]
    assert all(tick.startswith("2024-01-0") for tick in dated["x_ticks"])
    days = chart(sbx, "ax.plot(['mon', 'tue', 'wed'], [3, 1, 2])")
    assert (days["x_scale"], days["x_tick_labels"]) == ("categorical", ["mon", "tue", "wed"])


def test_bars_scatter_pie_and_several_axes(sbx: Sandbox) -> None:
    bars = chart(sbx, "ax.bar(['a', 'b'], [3, 5], label='2024')\nax.bar(['a', 'b'], [1, 2], label='2025')")
    assert bars["type"] == "bar"
    assert [(e["label"], e["group"], e["value"]) for e in bars["elements"]] == [
        ("a", "2024", 3),
        ("b", "2024", 5),
        ("a", "2025", 1),
        ("b", "2025", 2),
    ]
    sideways = chart(sbx, "ax.barh(['x', 'y'], [7, 8])\nax.set_xlabel('Count')")
    assert (sideways["x_label"], sideways["y_label"]) == (None, "Count")  # x: the bars' labels
    assert [(e["label"], e["value"]) for e in sideways["elements"]] == [("x", 7), ("y", 8)]

    scatter = chart(sbx, "ax.scatter([1, 2], [3, 4], label='points')")
    assert scatter["type"] == "scatter"
    assert scatter["elements"] == [{"label": "points", "points": [[1.0, 3.0], [2.0, 4.0]]}]

    pie = chart(sbx, "ax.pie([1, 1, 2], labels=['x', 'y', 'z'])")
    assert [(e["label"], e["angle"], e["radius"]) for e in pie["elements"]] == [
        ("x", 90.0, 1),
        ("y", 90.0, 1),
        ("z", 180.0, 1),
    ]

    both = shown(
        sbx,
        "import matplotlib.pyplot as plt\nfig, (a, b) = plt.subplots(1, 2)\na.plot([1, 2])\n"
        "b.pie([1])\nfig.suptitle('Two')\nplt.show()",
    ).chart
    assert both is not None and (both["type"], both["title"]) == ("superchart", "Two")
    assert [c["type"] for c in both["elements"]] == ["line", "pie"]

    odd = chart(sbx, "ax.imshow([[1, 2], [3, 4]])\nax.set_title('Heat')")
    assert odd == {"type": "unknown", "title": "Heat", "elements": []}


def test_box_plots_have_their_quartiles_whiskers_and_outliers(sbx: Sandbox) -> None:
    data = "[[1, 2, 3, 4, 5, 20], [2, 3, 4, 5, 6]], labels=['a', 'b'], patch_artist=True"
    upright = chart(sbx, f"ax.boxplot({data})\nax.set_ylabel('Latency (ms)')")
    assert (upright["type"], upright["y_unit"]) == ("box_and_whisker", "ms")
    assert upright["elements"] == [
        {
            "label": "a",
            "min": 1,
            "first_quartile": 2.25,
            "median": 3.5,
            "third_quartile": 4.75,
            "max": 5,
            "outliers": [20],
        },
        {
            "label": "b",
            "min": 2,
            "first_quartile": 3,
            "median": 4,
            "third_quartile": 5,
            "max": 6,
            "outliers": [],
        },
    ]
    sideways = chart(sbx, f"ax.boxplot({data}, vert=False)\nax.set_xlabel('Latency (ms)')")
    assert sideways["elements"] == upright["elements"] and sideways["y_unit"] == "ms"
    of_lines = chart(sbx, "ax.boxplot([[1, 2, 3]])")
    assert of_lines["type"] == "line"  # (no patches: its lines, as E2B reads it)


def test_a_figure_that_cannot_be_read_still_shows(sbx: Sandbox) -> None:
    """An extraction failure drops the chart only (here: a line whose x data is not a sequence
    of equal length, patched in after plotting)."""
    result = shown(sbx, PLOT + "line, = ax.plot([1, 2], [3, 4])\nline.get_xdata = lambda *a: [1]\nplt.show()")
    assert result.png and result.chart is None


def test_e2b_sdk_reads_them_as_its_data_and_typed_charts(e2b_env: str) -> None:
    sandbox = E2bSandbox.create(timeout=300)
    try:
        frame = sandbox.run_code("import pandas as pd\npd.DataFrame({'A': [1, 3], 'B': [2, 4]})")
        assert frame.results[0].data == {"A": [1, 3], "B": [2, 4]}
        assert "data" in frame.results[0].formats()

        plotted = sandbox.run_code(
            PLOT + "ax.plot([1, 2], [3, 4], label='up')\nax.set_xlabel('x (m)')\nplt.show()"
        )
        line = plotted.results[0].chart
        assert isinstance(line, LineChart) and line.type == ChartType.LINE
        assert (line.x_unit, line.x_scale, line.elements[0].label) == ("m", ScaleType.LINEAR, "up")
        assert line.elements[0].points == [(1, 3), (2, 4)]

        bars = sandbox.run_code(PLOT + "ax.bar(['a'], [2])\nplt.show()").results[0].chart
        assert isinstance(bars, BarChart) and [(b.label, b.value) for b in bars.elements] == [("a", 2)]
        pie = sandbox.run_code(PLOT + "ax.pie([1, 3])\nplt.show()").results[0].chart
        assert isinstance(pie, PieChart) and [p.angle for p in pie.elements] == [90.0, 270.0]
        box = (
            sandbox.run_code(PLOT + "ax.boxplot([[1, 2, 3]], patch_artist=True)\nplt.show()").results[0].chart
        )
        assert isinstance(box, BoxAndWhiskerChart)
        assert (box.elements[0].first_quartile, box.elements[0].median, box.elements[0].max) == (1.5, 2, 3)
        two = (
            sandbox.run_code(
                "import matplotlib.pyplot as plt\nfig, (a, b) = plt.subplots(2)\n"
                "a.plot([1])\nb.bar(['q'], [1])\nplt.show()"
            )
            .results[0]
            .chart
        )
        assert isinstance(two, SuperChart) and [type(c) for c in two.elements] == [LineChart, BarChart]
    finally:
        sandbox.kill()
