"""Rich results agentcell's Python kernel adds to what a displayed object shows (the kernel's
source begins with this file's; `install_rich_output` is called once the shell exists).

* TABLE_MIME, a pandas DataFrame as its columns: `{"column": [value, ...], ...}` (E2B's
  `Result.data`), for frames of at most MAX_TABLE_CELLS cells (a bigger one would outgrow the
  kernel's message bound and cost its text and HTML with it);
* CHART_MIME, the data of a matplotlib figure (E2B's `Result.chart`): one chart per Axes, a
  `superchart` of them for several. A chart is `line` or `scatter` (its series' points, ticks and
  scales), `bar` (one value per bar, by label and group), `pie` (each wedge's angle and radius),
  `box_and_whisker` (each box's quartiles, whiskers and outliers; a box plot drawn with
  `patch_artist=True`: one drawn with lines only is a `line` chart of them, as on E2B) or `unknown`
  (anything else: its title only).

Both know their class by name, so neither pandas nor matplotlib is imported until the code
does. A failure to extract leaves the format out, never the result.
"""

import contextlib
import datetime
import math

TABLE_MIME = "application/vnd.agentcell.table+json"
CHART_MIME = "application/vnd.agentcell.chart+json"
MAX_TABLE_CELLS = 50_000


def install_rich_output(shell):
    from IPython.core.formatters import BaseFormatter
    from traitlets import Unicode

    def register(mime, module, name, render):
        quiet = _quietly(render)

        class Formatter(BaseFormatter):
            """Renders objects of one class, known by name. Not by `for_type_by_name`: the inline
            backend pops every formatter's Figure printer when it starts."""

            format_type = Unicode(mime)

            def __call__(self, obj):
                classes = type(obj).__mro__
                if self.enabled and any(c.__module__ == module and c.__name__ == name for c in classes):
                    return quiet(obj)
                return None

        shell.display_formatter.formatters[mime] = Formatter(parent=shell.display_formatter)

    register(TABLE_MIME, "pandas.core.frame", "DataFrame", table_of)
    register(CHART_MIME, "matplotlib.figure", "Figure", chart_of)


def _quietly(render):
    def rendered(obj):
        try:
            return render(obj)
        except Exception:  # (an odd figure or frame: the other formats still show it)
            return None

    return rendered


def plain(value):
    """A JSON value for one cell or coordinate: numpy scalars as Python's, dates in ISO 8601, NaN
    and infinities (which JSON lacks) and NaT as null, anything else as its str."""
    if type(value).__name__ in ("NaTType", "NAType"):  # (NaT is a datetime)
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        with contextlib.suppress(ValueError, TypeError):
            value = value.item()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return str(value)


def table_of(frame):
    if frame.size > MAX_TABLE_CELLS:
        return None
    return {
        str(column): [plain(v) for v in values] for column, values in frame.to_dict(orient="list").items()
    }


# -- charts ----------------------------------------------------------------------------------------


def chart_of(figure):
    axes = figure.get_axes()
    if not axes:
        return None
    if len(axes) == 1:
        return axes_chart(axes[0])
    suptitle = figure._suptitle.get_text() if figure._suptitle is not None else ""
    return {"type": "superchart", "title": suptitle or None, "elements": [axes_chart(ax) for ax in axes]}


def axes_chart(ax):
    from matplotlib.collections import PathCollection
    from matplotlib.container import BarContainer
    from matplotlib.patches import PathPatch, Wedge

    lines = list(ax.get_lines())
    patches, collections = list(ax.patches), list(ax.collections)
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    if patches and not lines and not collections and all(isinstance(p, Wedge) for p in patches):
        return _pie(ax, patches)
    if bars and not lines and not collections and len(patches) == sum(len(c) for c in bars):
        return _bars(ax, bars)
    if patches and not collections and all(isinstance(p, PathPatch) for p in patches):
        return _boxes(ax, patches, lines)
    if collections and not lines and not patches and all(isinstance(c, PathCollection) for c in collections):
        return _points(ax, "scatter", [(c.get_label(), c.get_offsets()) for c in collections])
    if lines and not collections and not patches:
        series = [(line.get_label(), zip(line.get_xdata(), line.get_ydata(), strict=True)) for line in lines]
        return _points(ax, "line", series)
    return {"type": "unknown", "title": ax.get_title() or None, "elements": []}


def _labelled(ax, kind, sideways=False):
    """The fields of every 2D chart. `sideways`: its labels are along y (horizontal bars or
    boxes), which the chart names x, as for upright ones."""
    x_label, y_label = ax.get_xlabel() or None, ax.get_ylabel() or None
    if sideways:
        x_label, y_label = y_label, x_label
    return {
        "type": kind,
        "title": ax.get_title() or None,
        "x_label": x_label,
        "y_label": y_label,
        "x_unit": _unit(x_label),
        "y_unit": _unit(y_label),
    }


def _unit(label):
    """ "Distance (km)" or "Distance [km]" → "km"."""
    if not label:
        return None
    for opening, closing in (("(", ")"), ("[", "]")):
        start = label.rfind(opening)
        if start >= 0 and label.endswith(closing) and start < len(label) - 2:
            return label[start + 1 : -1]
    return None


def _points(ax, kind, series):
    chart = _labelled(ax, kind)
    for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
        ticks = list(axis.get_majorticklocs())
        chart[name + "_ticks"] = [_tick(axis, t) for t in ticks]
        chart[name + "_tick_labels"] = _tick_labels(axis, ticks)
        chart[name + "_scale"] = _scale(axis, ax)
    chart["elements"] = [
        {"label": _series_label(label, "Line" if kind == "line" else "Series", i), "points": _pairs(points)}
        for i, (label, points) in enumerate(series)
    ]
    return chart


def _tick_labels(axis, ticks):
    return [str(label) for label in axis.get_major_formatter().format_ticks(ticks)]


def _series_label(label, word, index):
    return f"{word} {index}" if not label or label.startswith("_") else label


def _pairs(points):
    return [[plain(x), plain(y)] for x, y in points]


def _is_dates(axis):
    return type(axis.converter).__module__ == "matplotlib.dates"


def _tick(axis, tick):
    if _is_dates(axis):
        import matplotlib.dates

        return matplotlib.dates.num2date(tick).isoformat()
    return plain(tick)


def _scale(axis, ax):
    if _is_dates(axis):
        return "datetime"
    if type(axis.converter).__module__ == "matplotlib.category":
        return "categorical"
    return ax.get_xscale() if axis is ax.xaxis else ax.get_yscale()


def _bars(ax, containers):
    horizontal = getattr(containers[0], "orientation", None) == "horizontal"
    chart = _labelled(ax, "bar", horizontal)
    axis = ax.yaxis if horizontal else ax.xaxis
    elements = []
    for i, container in enumerate(containers):
        group = _series_label(container.get_label(), "Group", i)
        rects = list(container)
        labels = _tick_labels(axis, [_center(rect, horizontal) for rect in rects])
        for label, rect in zip(labels, rects, strict=True):
            value = rect.get_width() if horizontal else rect.get_height()
            elements.append({"label": label, "group": group, "value": plain(value)})
    chart["elements"] = elements
    return chart


def _boxes(ax, patches, lines):
    """A box plot drawn with `patch_artist=True`: its boxes are patches (quartiles), its whiskers,
    caps, medians and fliers lines. Upright unless its positions are along y (where `boxplot`
    puts its fixed ticks)."""
    from matplotlib.ticker import FixedLocator

    sideways = isinstance(ax.yaxis.get_major_locator(), FixedLocator)
    chart = _labelled(ax, "box_and_whisker", sideways)
    position_axis = ax.yaxis if sideways else ax.xaxis
    lines = [[(v, p) if sideways else (p, v) for p, v in line.get_xydata()] for line in lines]
    ticks = list(position_axis.get_majorticklocs())
    tick_labels = dict(zip(ticks, _tick_labels(position_axis, ticks), strict=True))
    elements = []
    for patch in patches:
        corners = [(v, p) if sideways else (p, v) for p, v in patch.get_path().vertices]
        left, right = min(p for p, _ in corners), max(p for p, _ in corners)
        q1, q3 = min(v for _, v in corners), max(v for _, v in corners)
        center = (left + right) / 2
        label = next((text for tick, text in tick_labels.items() if math.isclose(tick, center)), str(center))
        box = {"label": label, "min": q1, "first_quartile": q1}
        box.update(median=None, third_quartile=q3, max=q3, outliers=[])
        for points in lines:
            _read_box_line(box, points, left, right, center)
        elements.append({key: plain(value) if key != "outliers" else value for key, value in box.items()})
    chart["elements"] = elements
    return chart


def _read_box_line(box, points, left, right, center):
    """What one line of a box plot says of the box from `left` to `right`, if it is the box's."""
    if not points:  # (the fliers of a box without outliers)
        return
    positions, values = [p for p, _ in points], [v for _, v in points]
    q1, q3 = box["first_quartile"], box["third_quartile"]
    on_center = all(math.isclose(p, center) for p in positions)
    spans_the_box = math.isclose(min(positions), left) and math.isclose(max(positions), right)
    if len(points) == 2 and values[0] == values[1] and spans_the_box and q1 <= values[0] <= q3:
        box["median"] = values[0]  # (a cap is narrower, and outside the quartiles)
    elif len(points) == 2 and on_center and max(values) <= q1:
        box["min"] = min(values)
    elif len(points) == 2 and on_center and min(values) >= q3:
        box["max"] = max(values)
    elif on_center:
        box["outliers"] = [plain(v) for v in values]


def _center(rect, horizontal):
    return rect.get_y() + rect.get_height() / 2 if horizontal else rect.get_x() + rect.get_width() / 2


def _pie(ax, wedges):
    return {
        "type": "pie",
        "title": ax.get_title() or None,
        "elements": [
            {"label": w.get_label(), "angle": round(abs(w.theta2 - w.theta1), 6), "radius": plain(w.r)}
            for w in wedges
        ],
    }
