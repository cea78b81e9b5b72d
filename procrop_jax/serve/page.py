"""The web page at `/`: drop or choose a photo, pick aspect ratios, see the boxes over the photo
and the crops beside it, each offered for download.

One self-contained document (no CDN, no file beside it): the contact sheet's style
(`html_pages.STYLE`, so boxes look the same as `procrop crop`'s index.html) and a short script
that posts the photo to /v1/crop and draws the answer. The crops shown and downloaded are cut
by the browser from the photo it displays (PNG); `format=image` on /v1/crop gives the server's
crop with the photo's own format, ICC profile and EXIF.
"""

from __future__ import annotations

import html

from procrop_jax import html_pages

ASPECTS = ("free", "1:1", "4:5", "4:3", "3:2", "16:9", "9:16")

_EXTRA_STYLE = """
#drop{border:2px dashed #999;border-radius:8px;padding:1.2em;background:#fff;margin:0 0 1em}
#drop.over{border-color:#0a84ff;background:#eef6ff} label{margin-right:.8em}
#status{margin:.6em 0;color:#555} #status.error{color:#b00020}
.photo img{max-width:560px;max-height:480px} .crops a{font-size:12px}
"""

_SCRIPT = r"""
const $ = (id) => document.getElementById(id);
const COLOURS = %(colours)s;
let current = null;

function setStatus(text, isError) {
  $('status').textContent = text;
  $('status').className = isError ? 'error' : '';
}

async function cropFile(file) {
  current = file;
  const params = new URLSearchParams();
  for (const box of document.querySelectorAll('input.aspect:checked')) {
    params.append('aspect', box.value);
  }
  $('custom').value.split(/[\s,]+/).filter(Boolean).forEach((a) => params.append('aspect', a));
  params.set('top_k', $('topk').value);
  setStatus('Cropping ' + file.name + ' ...');
  let response, data;
  try {
    response = await fetch('/v1/crop?' + params, {method: 'POST', body: file,
        headers: {'Content-Type': file.type || 'application/octet-stream'}});
    data = await response.json();
  } catch (e) {
    setStatus('The server did not answer: ' + e, true);
    return;
  }
  if (!response.ok) {
    setStatus('Error ' + response.status + ': ' + data.error.message, true);
    return;
  }
  show(file, data);
}

function show(file, data) {
  const result = $('result');
  result.innerHTML = '';
  const photo = document.createElement('div');
  photo.className = 'photo';
  const img = document.createElement('img');
  img.src = URL.createObjectURL(file);
  photo.appendChild(img);
  const crops = document.createElement('div');
  crops.className = 'crops';
  const stem = file.name.replace(/\.[^.]*$/, '') || 'photo';
  const ranks = {};
  data.crops.forEach((c, n) => {
    const colour = COLOURS[n %% COLOURS.length];
    const [x1, y1, x2, y2] = c.box;
    ranks[c.aspect] = (ranks[c.aspect] || 0) + 1;
    const label = c.aspect + ' #' + ranks[c.aspect] + ' ' + c.score.toFixed(2);
    const box = document.createElement('div');
    box.className = 'box';
    const percent = (v, side) => 100 * v / side + '%%';
    Object.assign(box.style, {left: percent(x1, data.width), top: percent(y1, data.height),
        width: percent(x2 - x1, data.width), height: percent(y2 - y1, data.height),
        borderColor: colour});
    const tag = document.createElement('span');
    tag.style.background = colour;
    tag.textContent = label;
    box.appendChild(tag);
    photo.appendChild(box);
    const figure = document.createElement('figure');
    const canvas = document.createElement('canvas');
    canvas.width = x2 - x1;
    canvas.height = y2 - y1;
    canvas.style.cssText = 'max-height:160px;max-width:240px;border:3px solid ' + colour;
    const link = document.createElement('a');
    link.textContent = 'download';
    link.download = stem + '_' + c.aspect.replace(/[^\w.-]/g, 'x') + '_' + ranks[c.aspect] + '.png';
    img.addEventListener('load', () => {
      canvas.getContext('2d').drawImage(img, x1, y1, x2 - x1, y2 - y1, 0, 0, x2 - x1, y2 - y1);
      canvas.toBlob((blob) => { link.href = URL.createObjectURL(blob); }, 'image/png');
    });
    const caption = document.createElement('figcaption');
    caption.textContent = label + ' ' + (x2 - x1) + 'x' + (y2 - y1) + ' ';
    caption.appendChild(link);
    figure.append(canvas, caption);
    crops.appendChild(figure);
  });
  const item = document.createElement('div');
  item.className = 'item';
  item.append(photo, crops);
  result.appendChild(item);
  setStatus(file.name + ': ' + data.width + 'x' + data.height + ', ' + data.crops.length
            + ' crops');
}

$('file').addEventListener('change', () => {
  if ($('file').files[0]) cropFile($('file').files[0]);
});
$('again').addEventListener('click', () => { if (current) cropFile(current); });
const drop = $('drop');
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => {
  e.preventDefault();
  drop.classList.remove('over');
  if (e.dataTransfer.files[0]) cropFile(e.dataTransfer.files[0]);
});
"""


def render() -> str:
  """The page's HTML."""
  boxes = "".join(
      f"<label><input type=checkbox class=aspect value='{html.escape(a)}'"
      f"{' checked' if a == 'free' else ''}> {html.escape(a)}</label>" for a in ASPECTS)
  colours = "[" + ",".join(f"'{c}'" for c in html_pages.COLOURS) + "]"
  body = [
      "<h1>procrop: aesthetic crops</h1>",
      "<div id=drop><p>Drop a photo here, or choose one: <input type=file id=file "
      "accept='image/*'></p>",
      f"<p>Aspects: {boxes} other: <input id=custom size=10 placeholder='e.g. 2:1'> "
      "crops per aspect: <input id=topk type=number min=1 max=20 value=3 style='width:3em'> "
      "<button id=again type=button>crop again</button></p></div>",
      "<div id=status></div><div id=result></div>",
      f"<style>{_EXTRA_STYLE}</style>",
      f"<script>{_SCRIPT % {'colours': colours}}</script>",
  ]
  return html_pages.page("procrop", body)
