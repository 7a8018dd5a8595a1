"""Contact sheets: one self-contained HTML page of what `efx similar` or `efx duplicates` found,
with small thumbnails made here and embedded in the page (it works when moved or mailed).

Pillow makes the thumbnails: it reads every format efx embeds and turns photos upright by their
EXIF tag (JPEG, PNG, WebP), as a viewer shows them and as efx embeds them.
"""

from __future__ import annotations

import base64
import html
import io
import os
import warnings
from typing import Any, BinaryIO

from . import files, remote, sources
from .config import DEFAULT_MAX_PIXELS
from .errors import EfxError
from .names import readable

INSTALL_HINT = "pip install pillow"
THUMBNAIL_PX = 160
MAX_SECTIONS = 200  # queries or groups on one page: about 2-3 MB, opens at once
MAX_CARDS = 48  # images per section; the rest are counted


def similar_page(
    results: list[dict[str, Any]],
    output: str,
    warning: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """The page of `efx similar`: each query's image, then its hits with rank and similarity."""
    with remote.using(storage_options):  # (images by URL are read for their thumbnails)
        return _similar_page(results, output, warning)


def _similar_page(results: list[dict[str, Any]], output: str, warning: str | None) -> str:
    sections = []
    for result in results[:MAX_SECTIONS]:
        cards = [_card(result["query"], "query", exists=sources.exists(result["query"]))]
        cards += [
            _card(hit["path"], f"#{hit['rank']} &middot; {hit['similarity']:.3f}", hit["exists"])
            for hit in result["hits"][:MAX_CARDS]
        ]
        note = f'<p class="error">{_text(result["error"])}</p>' if result["error"] else ""
        title = f"Query: {_text(result['query'])}"
        sections.append(_section(title, "".join(cards), note))
    summary = f"{len(results)} quer{'y' if len(results) == 1 else 'ies'}"
    return _page("efx similar", output, summary, sections, len(results), warning)


def duplicates_page(
    report: dict[str, Any],
    output: str,
    warning: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """The page of `efx duplicates`: each group, largest first, with each member's similarity to
    the group's first image."""
    with remote.using(storage_options):  # (images by URL are read for their thumbnails)
        return _duplicates_page(report, output, warning)


def _duplicates_page(report: dict[str, Any], output: str, warning: str | None) -> str:
    groups = report["groups"]
    sections = []
    for number, group in enumerate(groups[:MAX_SECTIONS], start=1):
        members = group["members"]
        cards = [
            _card(m["path"], f"{m['similarity']:.3f}", m["exists"]) for m in members[:MAX_CARDS]
        ]
        if len(members) > MAX_CARDS:
            cards.append(f'<p class="more">and {len(members) - MAX_CARDS} more</p>')
        sections.append(_section(f"Group {number} &middot; {group['size']} images", "".join(cards)))
    summary = (
        f"{report['rows']:,} images, threshold {report['threshold']:g}: "
        f"{len(groups):,} group{'' if len(groups) == 1 else 's'} of near-duplicates"
    )
    return _page("efx duplicates", output, summary, sections, len(groups), warning)


def check_target(path: str) -> None:
    """Refuse, before any work, a page that could not be written."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise EfxError(f"the folder for --html does not exist: {folder}")
    if os.path.isdir(path):
        raise EfxError(f"--html {path} is a folder; name the page's file")


def write_page(page: str, path: str) -> None:
    """The page, whole or not at all (written beside `path`, then renamed over it)."""
    try:
        files.write_atomically(path, page.encode("utf-8"), sync=False)
    except OSError as error:
        raise EfxError(f"cannot write --html {path}: {error.strerror or error}") from error


def thumbnail(path: str) -> str | None:
    """A small JPEG of the image at `path` (a file, or an image inside a shard: efx.sources)
    as a data: URL, or None if it cannot be read."""
    image_module, ops = _pillow()
    try:
        # Only a regular file is opened (a named pipe would wait forever), and nothing larger
        # than efx embeds is decoded: Pillow sizes a GIF by its frames, as efx does.
        with (
            warnings.catch_warnings(),
            _open(path) as file,
            image_module.open(file) as image,
        ):
            warnings.simplefilter("error", image_module.DecompressionBombWarning)
            if image.size[0] * image.size[1] > DEFAULT_MAX_PIXELS:
                return None
            image.draft("RGB", (THUMBNAIL_PX * 2, THUMBNAIL_PX * 2))  # JPEG: decode smaller
            upright = ops.exif_transpose(image)
            if upright.mode.startswith("I"):  # 16-bit gray: RGB would clip it to white
                upright = upright.convert("I").point(lambda value: value / 256).convert("L")
            upright = upright.convert("RGB")
            upright.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            buffer = io.BytesIO()
            upright.save(buffer, "JPEG", quality=75)
    except (OSError, ValueError, SyntaxError, image_module.DecompressionBombError):
        return None
    except image_module.DecompressionBombWarning:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _open(path: str) -> BinaryIO:
    if os.path.lexists(path):
        return files.open_input(path)
    data = sources.read_key(path)
    if data is None:
        raise FileNotFoundError(path)
    return io.BytesIO(data)


def _text(value: str) -> str:
    """Any text for the page, names that are not UTF-8 included (their bytes as \\xNN)."""
    return html.escape(readable(value))


def _pillow() -> tuple[Any, Any]:
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise EfxError(f"--html needs Pillow to make thumbnails: {INSTALL_HINT}") from None
    return Image, ImageOps


def _card(path: str, label: str, exists: bool) -> str:
    data = thumbnail(path) if exists else None
    name = _text(path)
    if data is not None:
        picture = f'<img src="{data}" alt="{name}" loading="eager">'
    else:
        why = "file missing" if not exists else "cannot be shown"
        picture = f'<div class="missing">{why}</div>'
    return (
        f'<figure class="card">{picture}<figcaption><span class="path" title="{name}">'
        f'{_text(_short_name(path))}</span><span class="label">{label}</span>'
        "</figcaption></figure>"
    )


def _short_name(path: str) -> str:
    """A file's name; for an image inside a shard, the shard's name and its own (a.tar/0.jpg)."""
    inside = sources.shard_of(path)
    if inside is None:
        return os.path.basename(path)
    return f"{os.path.basename(inside[0])}/{inside[1]}"


def _section(title: str, body: str, note: str = "") -> str:
    return f'<section><h2>{title}</h2>{note}<div class="grid">{body}</div></section>'


def _page(
    command: str,
    output: str,
    summary: str,
    sections: list[str],
    total: int,
    warning: str | None,
) -> str:
    shown = ""
    if total > len(sections):
        shown = (
            f" Showing the first {len(sections)} of {total:,}; all of them: "
            f"<code>{command} --json</code>."
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{command}: {_text(os.path.basename(output))}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; background: #fafafa; }}
h1 {{ font-size: 20px; margin: 0 0 4px; }}
header p {{ margin: 0 0 16px; color: #555; }}
section {{ background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 12px;
  margin: 0 0 16px; }}
h2 {{ font-size: 15px; margin: 0 0 10px; word-break: break-all; }}
.grid {{ display: grid; gap: 10px;
  grid-template-columns: repeat(auto-fill, minmax({THUMBNAIL_PX}px, 1fr)); }}
.card {{ margin: 0; }}
.card img, .missing {{ width: {THUMBNAIL_PX}px; height: {THUMBNAIL_PX}px; object-fit: contain;
  background: #eee; border-radius: 4px; display: block; }}
.missing {{ display: flex; align-items: center; justify-content: center; color: #a00;
  border: 1px dashed #c88; box-sizing: border-box; }}
figcaption {{ display: flex; justify-content: space-between; gap: 6px; font-size: 12px;
  width: {THUMBNAIL_PX}px; }}
.path {{ overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }}
.label {{ color: #555; white-space: nowrap; }}
.error, .more {{ color: #a00; margin: 0 0 8px; }}
.warning {{ background: #fff3cd; border: 1px solid #e0b100; padding: 8px; border-radius: 4px; }}
</style></head>
<body>
<header><h1>{command}</h1><p>{_text(output)}: {summary}.{shown}</p>
{f'<p class="warning">{_text(warning)}</p>' if warning else ""}</header>
{"".join(sections) or "<p>Nothing found.</p>"}
<script>
window.addEventListener("load", () => {{
  const images = Array.from(document.images);
  document.body.dataset.thumbnails = images.length;
  document.body.dataset.broken = images.filter(i => !i.complete || !i.naturalWidth).length;
}});
</script>
</body></html>
"""
