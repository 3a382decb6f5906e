// The asset graph as drawn: nodes (asset keys of the rendered node boxes) and edges (each
// lineage edge path, attributed to the node box its first point lies in and the node box its
// arrow ends at). Returns {nodes: [key], edges: [{src, dst, ds, dd}]} where ds/dd are the
// distances in pixels from the edge's ends to those boxes (0 = inside).
const boxes = new Map();
for (const a of document.querySelectorAll("a[href*='/assets/'][href$='?view=partitions']")) {
  const fo = a.closest("foreignObject");
  if (!fo) continue;
  const key = decodeURIComponent(new URL(a.href).pathname.replace(/^.*?\/assets\//, ""));
  const r = fo.getBoundingClientRect();
  boxes.set(key, {x: r.left, y: r.top, w: r.width, h: r.height});
}
function nearest(p) {
  let best = null;
  let bestD = Infinity;
  for (const [key, b] of boxes) {
    const dx = Math.max(b.x - p.x, 0, p.x - (b.x + b.w));
    const dy = Math.max(b.y - p.y, 0, p.y - (b.y + b.h));
    const d = Math.hypot(dx, dy);
    if (d < bestD) {
      bestD = d;
      best = key;
    }
  }
  return [best, bestD];
}
const edges = [];
for (const path of document.querySelectorAll("path[stroke='var(--color-lineage-edge)']")) {
  const m = path.getScreenCTM();
  if (!m) continue;
  const len = path.getTotalLength();
  const at = (l) => {
    const q = path.getPointAtLength(l);
    return {x: q.x * m.a + q.y * m.c + m.e, y: q.x * m.b + q.y * m.d + m.f};
  };
  const [src, ds] = nearest(at(0));
  const [dst, dd] = nearest(at(len));
  edges.push({src, dst, ds, dd});
}
return {nodes: [...boxes.keys()], edges};
