"""The page's query results as one HTML table: thumbnail, file name, verdict and the top three classes
(for a text model: the text, verdict and top three).

A gallery caption cuts "Indigo Bunting 87%" to "Indigo Bu…"; a table row keeps every query's image,
name, top class and how sure the model is side by side, and a query that could not be read gets its
own row with the reason, so one bad file never hides the others' results. Everything the user typed
(class names, file names) is escaped: the table is HTML.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass

from PIL import Image

from ..api import Prediction

THUMBNAIL_PIXELS = 72
TOP_CLASSES = 3

#: Styles scoped to the table (passed to ``launch(css=...)``); narrow screens drop the bars' labels' width.
RESULTS_CSS = """
#results table.fs-results { width: 100%; border-collapse: collapse; font-size: 0.95rem; border: none; }
#results .fs-results tr { border: none; }
#results .fs-results td, #results .fs-results th { padding: 6px 8px; vertical-align: middle; text-align: left;
  border: none; border-bottom: 1px solid var(--border-color-primary); }
#results .fs-results img { width: 56px; height: 56px; object-fit: cover; border-radius: 4px; display: block; }
#results .fs-name { max-width: 16rem; overflow-wrap: anywhere; color: var(--body-text-color-subdued); }
#results .fs-top { font-weight: 600; overflow-wrap: anywhere; }
#results .fs-mark { display: inline-block; margin-left: 6px; padding: 0 6px; border-radius: 8px; font-size: 0.8rem;
  font-weight: 500; background: #fde68a; color: #713f12; }
#results .fs-mark.fs-none { background: #e5e7eb; color: #374151; }
#results .fs-bar { display: grid; grid-template-columns: minmax(4rem, 10rem) 1fr 3rem; gap: 6px; align-items: center;
  margin: 2px 0; }
#results .fs-bar span:first-child { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
#results .fs-track { background: var(--neutral-200); border-radius: 3px; height: 10px; overflow: hidden; }
#results .fs-fill { background: var(--color-accent); height: 100%; }
#results .fs-error td { color: var(--error-text-color, #b91c1c); }
@media (max-width: 640px) {
  #results .fs-results thead { display: none; }
  #results .fs-results tr { display: grid; grid-template-columns: 64px 1fr; gap: 4px 8px; padding: 6px 0;
    border-bottom: 1px solid var(--border-color-primary); }
  #results .fs-results td { border: none; padding: 0; }
  #results .fs-results td.fs-bars { grid-column: 1 / -1; }
  #results .fs-results.fs-texts tr { grid-template-columns: 1fr auto; }
}
#results .fs-texts .fs-name { max-width: 28rem; color: var(--body-text-color); }
"""


@dataclass(frozen=True)
class QueryResult:
    """One query's row: its image (None when it could not be read, or for a text), its name (a file
    name, or the text itself), the text for a text model, and its verdict or error."""

    name: str
    image: Image.Image | None
    prediction: Prediction | None = None
    error: str | None = None
    text: str | None = None

    @property
    def query(self) -> Image.Image | str | None:
        """What the model classifies: the text, or the image."""
        return self.text if self.text is not None else self.image


def verdict_mark(prediction: Prediction) -> str:
    """"none of these?" for a rejected query, "unsure" below the model file's calibrated level, else nothing."""
    if prediction.unknown:
        return "none of these?"
    return "unsure" if prediction.unsure else ""


def top_classes(prediction: Prediction, count: int = TOP_CLASSES) -> list[tuple[str, float]]:
    return sorted(prediction.probabilities.items(), key=lambda item: -item[1])[:count]


def thumbnail_uri(image: Image.Image) -> str:
    """A small JPEG of ``image`` as a data URI, so the table needs no files served."""
    small = image.convert("RGB")
    small.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _bars(prediction: Prediction) -> str:
    rows = []
    for label, probability in top_classes(prediction):
        percent = 100 * probability
        rows.append(f'<div class="fs-bar"><span title="{html.escape(label)}">{html.escape(label)}</span>'
                    f'<div class="fs-track"><div class="fs-fill" style="width:{percent:.1f}%"></div></div>'
                    f"<span>{percent:.0f}%</span></div>")
    return "".join(rows)


def _row(result: QueryResult, pictures: bool) -> str:
    picture = f'<img src="{thumbnail_uri(result.image)}" alt="">' if result.image is not None else ""
    cells = (f"<td>{picture}</td>" if pictures else "") + f'<td class="fs-name">{html.escape(result.name)}</td>'
    if result.prediction is None:
        reason = html.escape(result.error or "")
        return (f'<tr class="fs-error">{cells}'
                f'<td class="fs-top">not classified</td><td class="fs-bars">{reason}</td></tr>')
    mark = verdict_mark(result.prediction)
    best = top_classes(result.prediction, 1)[0][0]
    badge = f'<span class="fs-mark{" fs-none" if result.prediction.unknown else ""}">{mark}</span>' if mark else ""
    return (f'<tr class="fs-row">{cells}<td class="fs-top">{html.escape(best)}{badge}</td>'
            f'<td class="fs-bars">{_bars(result.prediction)}</td></tr>')


def results_html(results: list[QueryResult], named_by: str = "file") -> str:
    """The table for ``results``, in the order the queries were given; ``named_by``: the name column's
    heading, "file" (with thumbnails) or "text" (texts, no thumbnails)."""
    if not results:
        return ""
    pictures = named_by != "text"
    body = "".join(_row(result, pictures) for result in results)
    head = ("<th></th>" if pictures else "") + f"<th>{html.escape(named_by)}</th>"
    return (f'<table class="fs-results{"" if pictures else " fs-texts"}"><thead><tr>{head}<th>top class</th>'
            f"<th>top {TOP_CLASSES}</th></tr></thead><tbody>{body}</tbody></table>")
