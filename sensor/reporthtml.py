"""``report --format html``: one self-contained page to mail from cron.

Charts come from Debian's python3-pygal (bookworm 2.4, trixie 3.0): it renders
SVG as a string, which is embedded inline (``disable_xml_declaration``), with
``js=[]`` so that the page loads no script from pygal's default URL; the page
has no external reference at all.  Tables are a jinja2 template
(sensor/templates/report.html.j2), autoescaped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sensor.activity import ActivityError

TEMPLATE = "report.html.j2"


def _pygal() -> Any:
    try:
        import pygal
    except ImportError:
        raise ActivityError("--format html needs python3-pygal (apt install python3-pygal)") from None
    return pygal


def _svg(chart: Any) -> str:
    svg: str = chart.render(is_unicode=True, disable_xml_declaration=True)
    return svg


def charts(data: dict[str, Any], top: int) -> dict[str, str]:
    """Inline SVG strings: scans per hour, top ports, IPv4/IPv6."""
    pygal = _pygal()
    common = {"js": [], "width": 900, "height": 320, "show_legend": False, "explicit_size": True}
    hours = data["hourly"]
    step = max(1, len(hours) // 12)
    hourly = pygal.Bar(title="Scans per hour (UTC)", x_label_rotation=30, **common)
    hourly.x_labels = [h["hour"][5:16].replace("T", " ") for h in hours]
    hourly.x_labels_major = hourly.x_labels[::step]
    hourly.show_minor_x_labels = False
    hourly.add("scans", [h["scans"] for h in hours])
    ports = pygal.HorizontalBar(title="Top probed ports (alerts)", **common)
    shown = data["ports"][:top]
    ports.x_labels = [p["port"] for p in shown]
    ports.add("alerts", [p["alerts"] for p in shown])
    family = pygal.Pie(title="Sources by address family", **{**common, "show_legend": True, "width": 450})
    family.add("IPv4", data["totals"]["ipv4"]["sources"])
    family.add("IPv6", data["totals"]["ipv6"]["sources"])
    return {"hourly": _svg(hourly), "ports": _svg(ports), "family": _svg(family)}


def render_html(data: dict[str, Any], top: int) -> str:
    """The whole page."""
    import jinja2
    from markupsafe import Markup
    svgs = charts(data, top)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
                             autoescape=True, keep_trailing_newline=True)
    page: str = env.get_template(TEMPLATE).render(
        data=data, top=top, charts={k: Markup(v) for k, v in svgs.items()})
    return page
