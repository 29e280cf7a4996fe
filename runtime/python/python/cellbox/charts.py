"""Charts extracted from matplotlib figures, as E2B's `Result.chart` gives them.

Each class reads the dict that the guest's chart extractor makes
(`guest-init/kernel/cellbox_charts.py`) and keeps it for `to_dict()`.
"""

from __future__ import annotations

import enum
from typing import Any, List, Optional, Tuple, Union


class ChartType(str, enum.Enum):
    LINE = "line"
    SCATTER = "scatter"
    BAR = "bar"
    PIE = "pie"
    BOX_AND_WHISKER = "box_and_whisker"
    SUPERCHART = "superchart"
    UNKNOWN = "unknown"


class ScaleType(str, enum.Enum):
    LINEAR = "linear"
    DATETIME = "datetime"
    CATEGORICAL = "categorical"
    LOG = "log"
    SYMLOG = "symlog"
    LOGIT = "logit"
    FUNCTION = "function"
    FUNCTIONLOG = "functionlog"
    ASINH = "asinh"
    UNKNOWN = "unknown"


def _scale(value: Optional[str]) -> ScaleType:
    try:
        return ScaleType(value)
    except ValueError:
        return ScaleType.UNKNOWN


class Chart:
    """A chart: its type, title and elements; `to_dict()` gives the raw data."""

    def __init__(self, **data: Any):
        self._raw_data = data
        try:
            self.type = ChartType(data.get("type") or ChartType.UNKNOWN)
        except ValueError:
            self.type = ChartType.UNKNOWN
        self.title: Optional[str] = data.get("title")
        self.elements: List[Any] = list(data.get("elements") or [])

    def to_dict(self) -> dict:
        return self._raw_data

    def __repr__(self) -> str:
        return f"{type(self).__name__}(title={self.title!r}, {len(self.elements)} elements)"


class Chart2D(Chart):
    """A chart with two axes."""

    def __init__(self, **data: Any):
        super().__init__(**data)
        self.x_label: Optional[str] = data.get("x_label")
        self.y_label: Optional[str] = data.get("y_label")
        self.x_unit: Optional[str] = data.get("x_unit")
        self.y_unit: Optional[str] = data.get("y_unit")


class PointData:
    """One series of a line or scatter chart."""

    def __init__(self, **data: Any):
        self.label: str = data.get("label", "")
        self.points: List[Tuple[Union[str, float], Union[str, float]]] = [
            tuple(point) for point in data.get("points") or []  # type: ignore[misc]
        ]


class PointChart(Chart2D):
    def __init__(self, **data: Any):
        super().__init__(**data)
        self.x_ticks: List[Union[str, float]] = list(data.get("x_ticks") or [])
        self.x_tick_labels: List[str] = list(data.get("x_tick_labels") or [])
        self.x_scale = _scale(data.get("x_scale"))
        self.y_ticks: List[Union[str, float]] = list(data.get("y_ticks") or [])
        self.y_tick_labels: List[str] = list(data.get("y_tick_labels") or [])
        self.y_scale = _scale(data.get("y_scale"))
        self.elements = [PointData(**element) for element in self.elements]


class LineChart(PointChart):
    pass


class ScatterChart(PointChart):
    pass


class BarData:
    def __init__(self, **data: Any):
        self.label: str = data.get("label", "")
        self.group: str = data.get("group", "")
        self.value: str = data.get("value", "")


class BarChart(Chart2D):
    def __init__(self, **data: Any):
        super().__init__(**data)
        self.elements = [BarData(**element) for element in self.elements]


class PieData:
    def __init__(self, **data: Any):
        self.label: str = data.get("label", "")
        self.angle: float = data.get("angle", 0.0)
        self.radius: float = data.get("radius", 0.0)


class PieChart(Chart):
    def __init__(self, **data: Any):
        super().__init__(**data)
        self.elements = [PieData(**element) for element in self.elements]


class BoxAndWhiskerData:
    def __init__(self, **data: Any):
        self.label: str = data.get("label", "")
        self.min: float = data.get("min", 0.0)
        self.first_quartile: float = data.get("first_quartile", 0.0)
        self.median: float = data.get("median", 0.0)
        self.third_quartile: float = data.get("third_quartile", 0.0)
        self.max: float = data.get("max", 0.0)
        self.outliers: List[float] = list(data.get("outliers") or [])


class BoxAndWhiskerChart(Chart2D):
    def __init__(self, **data: Any):
        super().__init__(**data)
        self.elements = [BoxAndWhiskerData(**element) for element in self.elements]


class SuperChart(Chart):
    """Several charts in one figure (subplots)."""

    def __init__(self, **data: Any):
        super().__init__(**data)
        self.elements = [deserialize_chart(element) for element in self.elements]


_BY_TYPE = {
    ChartType.LINE: LineChart,
    ChartType.SCATTER: ScatterChart,
    ChartType.BAR: BarChart,
    ChartType.PIE: PieChart,
    ChartType.BOX_AND_WHISKER: BoxAndWhiskerChart,
    ChartType.SUPERCHART: SuperChart,
}


def deserialize_chart(data: Optional[dict]) -> Optional[Chart]:
    """The chart class for `data`'s type (a plain `Chart` for unknown ones)."""
    if not data:
        return None
    try:
        cls = _BY_TYPE.get(ChartType(data.get("type")), Chart)
    except ValueError:
        cls = Chart
    return cls(**data)
