"""The rating widget for JupyterLab: source | edited | instruction, two 1–5 ratings,
save, skip, and the rater id. All it does is bind ipywidgets to a ``RatingSession``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from nhr.errors import NhrError
from nhr.evaluate.rating import SCALE, RatingItem, RatingSession

BOX = 384  # side of the square box each image is shown in, px
BACKDROP = (238, 238, 238)  # the letterbox around an image that does not fill the box


def _png(path: Path | None, box: int = BOX) -> bytes:
    """The image at ``path`` scaled to fit a ``box``×``box`` square and centred on the
    backdrop (letterboxed, aspect kept), as PNG; the empty box for None. Every item then
    takes the same room, so the controls below never move."""
    from PIL import Image

    canvas = Image.new("RGB", (box, box), BACKDROP)
    if path is not None:
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = box / max(im.size)
            size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
            im = im.resize(size, Image.Resampling.LANCZOS)
            canvas.paste(im, ((box - size[0]) // 2, (box - size[1]) // 2))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


class RatingApp:
    """The widget of one rating session; ``app.widget`` is what the notebook displays."""

    def __init__(self, session: RatingSession, run_dir: Path | str) -> None:
        try:
            import ipywidgets as w
        except ImportError:
            raise NhrError(
                "ipywidgets is not installed", "install it: pip install ipywidgets==8.1.9"
            ) from None
        self.session = session
        self.run_dir = Path(run_dir)
        self.item: RatingItem | None = None
        side = f"{BOX}px"
        self.source = w.Image(format="png", layout=w.Layout(width=side, height=side))
        self.edited = w.Image(format="png", layout=w.Layout(width=side, height=side))
        # a fixed height (scrolling when long), so the buttons below stay in place
        self.instruction = w.HTML(
            layout=w.Layout(width=f"{2 * BOX + 16}px", height="4.5em", overflow="auto")
        )
        self.adherence = w.ToggleButtons(
            options=list(SCALE), value=None, description="adherence", style={"button_width": "40px"}
        )
        self.aesthetic = w.ToggleButtons(
            options=list(SCALE), value=None, description="aesthetic", style={"button_width": "40px"}
        )
        self.rater = w.Text(value=session.rater, description="rater id")
        self.save = w.Button(description="save and next", button_style="success")
        self.skip = w.Button(description="skip")
        self.status = w.HTML()
        for name in ("source", "edited", "instruction", "adherence", "aesthetic", "save", "skip"):
            getattr(self, name).add_class(f"nhr-rate-{name}")  # stable handles for a browser
        self.status.add_class("nhr-rate-status")
        self.save.on_click(self._on_save)
        self.skip.on_click(self._on_skip)
        self.rater.observe(self._on_rater, names="value")
        self.widget = w.VBox(
            [
                w.HBox(
                    [
                        w.VBox([w.HTML("<b>source</b>"), self.source]),
                        w.VBox([w.HTML("<b>edited</b>"), self.edited]),
                    ]
                ),
                self.instruction,
                self.adherence,
                self.aesthetic,
                w.HBox([self.save, self.skip, self.rater]),
                self.status,
            ]
        )
        self.show_next()

    def show_next(self) -> None:
        """Show the rater's next item (or say they are through)."""
        self.item = self.session.current()
        self.adherence.value = None
        self.aesthetic.value = None
        p = self.session.progress()
        counts = f"{p['rated']} rated, {p['skipped']} skipped, {p['left']} left of {p['total']}"
        if self.item is None:
            self.source.value = self.edited.value = _png(None)
            self.instruction.value = "<i>nothing left to rate</i>"
            self.status.value = f"{self.session.rater}: done — {counts}"
            return
        self.source.value = _png(self.run_dir / self.item.source_image)
        self.edited.value = _png(self.run_dir / self.item.edited_image)
        self.instruction.value = f"<b>instruction:</b> {_escape(self.item.instruction)}"
        self.status.value = f"{self.session.rater}: {counts}"

    def _on_save(self, _: Any = None) -> None:
        if self.item is None:
            return
        if self.adherence.value is None or self.aesthetic.value is None:
            self.status.value = "<b>pick both ratings first</b> (or skip)"
            return
        self.session.rate(self.item.item_id, self.adherence.value, self.aesthetic.value)
        self.show_next()

    def _on_skip(self, _: Any = None) -> None:
        if self.item is not None:
            self.session.skip(self.item.item_id)
        self.show_next()

    def _on_rater(self, change: dict[str, Any]) -> None:
        name = str(change["new"]).strip()
        if name and "," not in name:
            self.session = RatingSession(self.session.items, self.session.ratings_file, name)
            self.show_next()


def _escape(text: str) -> str:
    import html

    return html.escape(text)
