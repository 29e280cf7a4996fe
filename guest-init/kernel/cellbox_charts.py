"""Structured data behind rich results, in the shapes E2B's SDK reads:

- chart_of(figure): a matplotlib figure as a `chart` (line, scatter, bar, pie,
  box_and_whisker, superchart for several axes, or unknown);
- dataframe_data(frame): a pandas DataFrame as `data` (column -> list).

Both are best effort: anything unexpected gives None, never an error in the cell.
"""
import json
import math
import re

# Box plots keep no trace of their statistics in the artists they draw, so the
# kernel wraps Axes.bxp and records them here: id(axes) -> [(label, stats)].
_box_stats = {}

_UNIT = re.compile(r"[\(\[]([^\(\)\[\]]+)[\)\]]\s*$")
MAX_DATA_CELLS = 100_000


def record_boxes(axes, bxpstats):
    """Called by the wrapped Axes.bxp with the statistics it is about to draw."""
    stats = _box_stats.setdefault(id(axes), [])
    for i, s in enumerate(bxpstats):
        stats.append((str(s.get("label", i + 1)), s))


def wrap_bxp(axes_class):
    """Wraps Axes.bxp (used by boxplot) to record the statistics it draws."""
    original = axes_class.bxp

    def bxp(self, bxpstats, *args, **kwargs):
        try:
            record_boxes(self, bxpstats)
        except Exception:
            pass
        return original(self, bxpstats, *args, **kwargs)

    axes_class.bxp = bxp


def _number(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return value if math.isfinite(value) else None


def _label_and_unit(text):
    text = text or ""
    match = _UNIT.search(text)
    return (text or None), (match.group(1).strip() if match else None)


def _scale(axis, name):
    converter = getattr(axis, "converter", None)
    kind = type(converter).__name__ if converter is not None else ""
    if "Date" in kind:
        return "datetime"
    if "StrCategory" in kind:
        return "categorical"
    return name


def _axis_info(ax, which):
    axis = ax.xaxis if which == "x" else ax.yaxis
    label, unit = _label_and_unit(axis.get_label().get_text())
    scale = _scale(axis, ax.get_xscale() if which == "x" else ax.get_yscale())
    ticks = [_date(t) if scale == "datetime" else _number(t) for t in axis.get_ticklocs()]
    tick_labels = [t.get_text() for t in axis.get_ticklabels()]
    return {f"{which}_label": label, f"{which}_unit": unit, f"{which}_ticks": ticks,
            f"{which}_tick_labels": tick_labels, f"{which}_scale": scale}


def _series_label(artist, index):
    label = artist.get_label() or ""
    return label if not label.startswith("_") else f"series {index + 1}"


def _tick_label_at(ax, position, orientation):
    axis = ax.xaxis if orientation == "vertical" else ax.yaxis
    for loc, text in zip(axis.get_ticklocs(), axis.get_ticklabels()):
        if abs(loc - position) < 1e-9 and text.get_text():
            return text.get_text()
    return str(_number(position))


def _bars(ax):
    from matplotlib.container import BarContainer
    elements = []
    for group_index, container in enumerate(c for c in ax.containers if isinstance(c, BarContainer)):
        orientation = getattr(container, "orientation", None) or "vertical"
        group = _series_label(container, group_index)
        for rect in container.patches:
            if orientation == "vertical":
                center, value = rect.get_x() + rect.get_width() / 2, rect.get_height()
            else:
                center, value = rect.get_y() + rect.get_height() / 2, rect.get_width()
            elements.append({"label": _tick_label_at(ax, center, orientation),
                             "group": group, "value": _number(value)})
    return elements


def _pie(wedges):
    # Rounded as E2B does: 360 * 0.9 is 324, not matplotlib's 323.99999141693115.
    return [{"label": w.get_label(), "angle": _number(round(abs(w.theta2 - w.theta1), 4)),
             "radius": _number(w.r)} for w in wedges]


def _boxes(stats):
    return [{"label": label, "min": _number(s["whislo"]), "first_quartile": _number(s["q1"]),
             "median": _number(s["med"]), "third_quartile": _number(s["q3"]),
             "max": _number(s["whishi"]), "outliers": [_number(v) for v in s.get("fliers", [])]}
            for label, s in stats]


def _date(value):
    """A date axis position as ISO 8601 text (as E2B gives it)."""
    import matplotlib.dates as mdates
    try:
        return mdates.num2date(float(value)).isoformat()
    except Exception:
        return _number(value)


def _points(ax, lines, scatters):
    date_x = _scale(ax.xaxis, "") == "datetime"

    def x_value(x):
        return _date(x) if date_x else _number(x)

    elements = []
    for i, line in enumerate(lines):
        xs, ys = line.get_xdata(orig=False), line.get_ydata(orig=False)
        elements.append({"label": _series_label(line, i),
                         "points": [[x_value(x), _number(y)] for x, y in zip(xs, ys)]})
    for i, collection in enumerate(scatters, start=len(lines)):
        elements.append({"label": _series_label(collection, i),
                         "points": [[x_value(x), _number(y)] for x, y in collection.get_offsets()]})
    return elements


def _axes_chart(ax):
    from matplotlib.collections import PathCollection
    from matplotlib.container import BarContainer
    from matplotlib.patches import Wedge

    title = ax.get_title() or None
    boxes = _box_stats.get(id(ax))
    wedges = [p for p in ax.patches if isinstance(p, Wedge)]
    has_bars = any(isinstance(c, BarContainer) for c in ax.containers)
    lines = [line for line in ax.get_lines() if line.get_visible()]
    scatters = [c for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets())]
    two_d = {k: v for k, v in {**_axis_info(ax, "x"), **_axis_info(ax, "y")}.items()
             if k.endswith(("_label", "_unit"))}
    if boxes:
        return {"type": "box_and_whisker", "title": title, **two_d, "elements": _boxes(boxes)}
    if wedges:
        return {"type": "pie", "title": title, "elements": _pie(wedges)}
    if has_bars:
        return {"type": "bar", "title": title, **two_d, "elements": _bars(ax)}
    if lines or scatters:
        kind = "scatter" if scatters and not lines else "line"
        return {"type": kind, "title": title, **_axis_info(ax, "x"), **_axis_info(ax, "y"),
                "elements": _points(ax, lines, scatters)}
    return {"type": "unknown", "title": title, "elements": []}


def chart_of(figure):
    """The figure's chart, or None."""
    try:
        axes = [ax for ax in figure.get_axes() if ax.get_visible()]
        if not axes:
            return None
        if not any(t.get_text() for ax in axes for t in ax.get_xticklabels()):
            figure.canvas.draw()            # tick labels exist only once drawn
        charts = [_axes_chart(ax) for ax in axes]
        if len(charts) == 1:
            return charts[0]
        suptitle = getattr(figure, "_suptitle", None)
        return {"type": "superchart", "title": suptitle.get_text() if suptitle else None,
                "elements": charts}
    except Exception:
        return None
    finally:
        for ax in figure.get_axes():
            _box_stats.pop(id(ax), None)


def dataframe_data(frame):
    """column -> list of JSON values, or None past MAX_DATA_CELLS cells."""
    try:
        if frame.size > MAX_DATA_CELLS:
            return None
        return {str(column): json.loads(frame[column].to_json(orient="values", date_format="iso"))
                for column in frame.columns}
    except Exception:
        return None
