// The inspector page's behaviour: tabs for the stages, graphs laid out by dagre with each layer
// (binding) or kernel collapsed to one box until opened, a details panel for the selected node
// or kernel, the source with the selected item's lines highlighted, and a training log's
// curves. Everything it shows is in the JSON element `#data`, which `nabla inspect` wrote.
"use strict";

const DATA = JSON.parse(document.getElementById("data").textContent);
const MODEL = DATA.model || null;
const SVG_NS = "http://www.w3.org/2000/svg";
const started = performance.now();

const state = {
  tab: null,
  expanded: {},   // tab key -> Set of open group keys
  listed: null,   // {tab, key}: a group too large to draw, listed under the graph
  selected: null, // {kind: "node", tab, id} | {kind: "group", tab, name} | {kind: "kernel", index}
  zoom: 1,
  scale: "linear",
};

// ---------------------------------------------------------------------------------------------
// Small helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "onclick") node.addEventListener("click", v);
    else if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function svgEl(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function si(n, unit) {
  if (n === null || n === undefined) return "–";
  const steps = [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]];
  for (const [f, p] of steps) if (Math.abs(n) >= f) return (n / f).toFixed(2) + " " + p + unit;
  return n + " " + unit;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function ms(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  return seconds < 1e-3 ? (seconds * 1e6).toFixed(1) + " µs" : (seconds * 1e3).toFixed(3) + " ms";
}

function plural(n, noun) { return n + " " + noun + (n === 1 ? "" : "s"); }

// ---------------------------------------------------------------------------------------------
// The source, and highlighting lines of it

function renderSource() {
  const list = document.getElementById("source");
  if (!MODEL) {
    document.getElementById("source-pane").hidden = true;
    document.querySelector("main").style.gridTemplateColumns = "1fr minmax(260px, 24%)";
    return;
  }
  document.getElementById("source-title").textContent = MODEL.file;
  MODEL.source.split("\n").forEach((text, i) => {
    list.append(el("li", { id: "L" + (i + 1), "data-line": i + 1 },
      el("span", { class: "ln" }, i + 1), el("code", {}, text)));
  });
}

function highlight(lines) {
  for (const li of document.querySelectorAll("#source li.hl")) li.classList.remove("hl");
  const found = (lines || []).map(l => document.getElementById("L" + l)).filter(Boolean);
  for (const li of found) li.classList.add("hl");
  if (found.length) found[0].scrollIntoView({ block: "center" });
}

// ---------------------------------------------------------------------------------------------
// Stages and their nodes

const GRAPH_TABS = MODEL ? ["forward", "gradients", "simplified", "fused"] : [];

function stageData(tab) {
  const key = tab === "fused" ? "simplified" : tab;
  const stage = MODEL.stages.find(s => s.key === key);
  if (!stage.byId) stage.byId = new Map(stage.nodes.map(n => [n.id, n]));
  if (!stage.users) {
    stage.users = new Map();
    for (const n of stage.nodes) for (const o of n.operands) {
      if (!stage.users.has(o)) stage.users.set(o, []);
      stage.users.get(o).push(n.id);
    }
  }
  return stage;
}

// The boxes a node sits in, outermost first: its binding's group, and in the fused tab, within
// the group of the binding its kernel computes, the kernel computing it.
function pathOf(tab, node) {
  if (tab !== "fused") return [node.group];
  const k = node.kernels.length ? node.kernels[0] : node.inlined.length ? node.inlined[0] : null;
  if (k === null) return [BUFFERS];
  return [kernelHome(k), "kernel " + k];
}

// The group of the first value a kernel computes (the copy of results at the end has none).
function kernelHome(k) {
  const kernel = MODEL.kernels[k];
  if (kernel.home === undefined) {
    const first = kernel.nodes.length ? stageData("simplified").byId.get(kernel.nodes[0]) : null;
    kernel.home = first ? first.group : "results";
  }
  return kernel.home;
}

// The fused tab's box of the values no kernel computes: parameters, inputs, constants, views.
const BUFFERS = "buffers and views";

// A group's key: its path joined, so that a kernel's key names its binding's group too.
function keyOf(path) { return path.join(" › "); }

function groupKind(name) {
  if (name.startsWith("grad ")) return "grad";
  if (name.startsWith("update ")) return "update";
  return "";
}

function isKernel(name) { return name.startsWith("kernel "); }

function groupTitle(name, members) {
  if (isKernel(name)) {
    const k = MODEL.kernels[Number(name.slice(7))];
    const time = k.seconds !== null ? "  " + ms(k.seconds) : "";
    return [name + ": " + k.title, plural(members.length, "op") + time];
  }
  const kernels = new Set(members.flatMap(n => n.kernels));
  return [name, plural(members.length, "op") + (kernels.size ? ", " + plural(kernels.size, "kernel") : "")];
}

function groupLines(name, nodes) {
  if (isKernel(name)) return MODEL.kernels[Number(name.slice(7))].lines;
  const line = nodes.find(n => n.line !== null);
  return line ? [line.line] : [];
}

function nodeText(node) {
  const name = node.label ? node.label : (node.builtin && node.builtin !== node.op.split(" ")[0] ? node.builtin : "");
  const op = node.op.length > 38 ? node.op.slice(0, 37) + "…" : node.op;
  return ["%" + node.id + " " + op, (name ? name + "  " : "") + node.shape];
}

// ---------------------------------------------------------------------------------------------
// Graph tabs: dagre layout of groups, open groups as clusters of what they hold

// Boxes drawn at most: dagre's layered layout takes seconds beyond a few hundred boxes (long
// edges become chains of dummy nodes), and such a picture is not read anyway. A group that
// would pass the limit is listed as a table instead.
const MAX_BOXES = 160;

function openSet(tab) { return state.expanded[tab] || (state.expanded[tab] = new Set()); }

// What is drawn with the tab's open groups: the open groups (clusters, with their parents), and
// the boxes: a closed group with its members, or a node whose groups are all open.
function layoutItems(tab) {
  const stage = stageData(tab);
  const open = openSet(tab);
  const clusters = new Map(), boxes = new Map();
  for (const node of stage.nodes) {
    const path = pathOf(tab, node);
    let parent = null, box = null;
    for (let i = 0; i < path.length; i++) {
      const key = keyOf(path.slice(0, i + 1));
      if (!open.has(key)) { box = { id: "g:" + key, key, name: path[i], parent, members: [] }; break; }
      if (!clusters.has(key)) clusters.set(key, { id: "c:" + key, key, name: path[i], parent, members: [] });
      clusters.get(key).members.push(node);
      parent = "c:" + key;
    }
    if (box) {
      if (!boxes.has(box.id)) boxes.set(box.id, box);
      boxes.get(box.id).members.push(node);
      node.box = box.id;
    } else {
      boxes.set("n:" + node.id, { id: "n:" + node.id, node, parent });
      node.box = "n:" + node.id;
    }
  }
  return { stage, clusters, boxes };
}

// Opens a group, unless that would draw more than MAX_BOXES: then it is listed instead.
function openGroup(tab, key) {
  const open = openSet(tab);
  open.add(key);
  if (layoutItems(tab).boxes.size > MAX_BOXES) {
    open.delete(key);
    state.listed = { tab, key };
    return false;
  }
  return true;
}

function renderGraph(tab, view) {
  const { stage, clusters, boxes } = layoutItems(tab);
  const open = openSet(tab);
  const counts = tab === "fused" ? MODEL.fused : stage.counts;
  view.append(
    el("h2", {}, tabTitle(tab)),
    el("p", { class: "about" }, tab === "fused"
      ? "The simplified train step cut into kernels (loop nests or library calls), grouped by the binding whose values they compute: open a group for its kernels, a kernel for the values it computes."
      : stage.about),
    el("p", { class: "counts" },
      el("span", {}, el("b", {}, counts.ops), " ops"),
      el("span", {}, el("b", {}, counts.kernels), tab === "fused" ? " kernels" : " kernels if every op were its own"),
      el("span", {}, el("b", {}, si(counts.flops, "FLOP")), " per step"),
      el("span", {}, el("b", {}, bytes(counts.bytes)), " moved (estimated)"),
      el("span", {}, "batch ", el("b", {}, MODEL.batch))),
    el("div", { class: "toolbar" },
      el("button", { onclick: () => { open.clear(); state.listed = null; rerender(); } }, "close all"),
      el("button", { onclick: () => { state.zoom = Math.min(2, state.zoom * 1.25); rerender(); } }, "zoom in"),
      el("button", { onclick: () => { state.zoom = Math.max(0.2, state.zoom / 1.25); rerender(); } }, "zoom out"),
      el("span", { class: "hint" }, "Click a box to open it, its title to close it; click a node for its details.")));

  const g = new dagre.graphlib.Graph({ compound: true });
  g.setGraph({ rankdir: "TB", nodesep: 14, ranksep: 26, marginx: 12, marginy: 12 });
  g.setDefaultEdgeLabel(() => ({}));
  const textWidth = lines => Math.max(...lines.map(l => l.length)) * 6.7 + 16;
  for (const c of clusters.values()) {
    g.setNode(c.id, { item: c, title: groupTitle(c.name, c.members)[0] });
    if (c.parent) g.setParent(c.id, c.parent);
  }
  for (const b of boxes.values()) {
    const text = b.node ? nodeText(b.node) : groupTitle(b.name, b.members);
    g.setNode(b.id, { item: b, text, width: textWidth(text), height: b.node ? 34 : 36 });
    if (b.parent) g.setParent(b.id, b.parent);
  }
  for (const node of stage.nodes) {
    for (const o of node.operands) {
      const from = stage.byId.get(o).box;
      // Parameters and inputs feed every kernel: their edges would cross the whole picture.
      if (from === "g:" + BUFFERS) continue;
      if (from !== node.box && !g.hasEdge(from, node.box)) g.setEdge(from, node.box);
    }
  }
  dagre.layout(g);

  const size = g.graph();
  const width = Math.max(size.width || 0, 100), height = Math.max(size.height || 0, 60);
  const root = svgEl("svg", {
    width: width * state.zoom, height: height * state.zoom, viewBox: `0 0 ${width} ${height}`,
    role: "img", "aria-label": tabTitle(tab) + " graph",
  });
  root.append(svgEl("defs", {}, svgEl("marker", {
    id: "arrow", viewBox: "0 0 8 8", refX: 8, refY: 4, markerWidth: 6, markerHeight: 6, orient: "auto",
  }, svgEl("path", { d: "M0,0 L8,4 L0,8 z", fill: "#98a2b3" }))));
  for (const c of clusters.values()) {
    const n = g.node(c.id);
    const x = n.x - n.width / 2, y = n.y - n.height / 2;
    root.append(svgEl("rect", { class: "cluster", x, y, width: n.width, height: n.height, rx: 6 }));
    const title = svgEl("g", { class: "cluster-title", "data-group": c.key },
      svgEl("rect", { x, y: y - 2, width: Math.min(n.width, n.title.length * 6.7 + 24), height: 16, fill: "#eef4ff" }),
      svgEl("text", { x: x + 6, y: y + 10 }, "▾ " + n.title));
    title.addEventListener("click", () => {
      for (const k of [...open]) if (k === c.key || k.startsWith(c.key + " › ")) open.delete(k);
      rerender();
    });
    root.append(title);
  }
  for (const e of g.edges()) {
    const points = g.edge(e).points || [];
    if (!points.length) continue;
    const d = points.map((p, i) => (i ? "L" : "M") + p.x.toFixed(1) + "," + p.y.toFixed(1)).join(" ");
    root.append(svgEl("path", { class: "edge", d, "marker-end": "url(#arrow)" }));
  }
  for (const b of boxes.values()) {
    const n = g.node(b.id);
    const x = n.x - n.width / 2, y = n.y - n.height / 2;
    if (!b.node) {
      const box = svgEl("g", { class: "group " + groupKind(b.name), "data-group": b.key },
        svgEl("rect", { x, y, width: n.width, height: n.height, rx: 6 }),
        svgEl("text", { x: x + 8, y: y + 15 }, "▸ " + n.text[0]),
        svgEl("text", { x: x + 8, y: y + 29, class: "muted" }, n.text[1]));
      box.addEventListener("click", () => {
        state.listed = null;
        openGroup(tab, b.key);
        selectGroup(tab, b.name, b.members);
        rerender();
      });
      root.append(box);
    } else {
      const node = b.node;
      const classes = ["node", node.grad_of ? "grad" : "", groupKind(node.group) === "update" ? "update" : "",
        node.rewrites.length ? "rewritten" : ""].join(" ");
      const box = svgEl("g", { class: classes, "data-node": node.id, "data-label": node.label || "" },
        svgEl("rect", { x, y, width: n.width, height: n.height, rx: 3 }),
        svgEl("text", { x: x + 6, y: y + 14 }, n.text[0]),
        svgEl("text", { x: x + 6, y: y + 28, class: "muted" }, n.text[1]));
      box.addEventListener("click", () => selectNode(tab, node.id));
      root.append(box);
    }
  }
  view.append(el("div", { id: "canvas" }, root));
  if (state.listed && state.listed.tab === tab) view.append(listedGroup(tab, stage, state.listed.key));
  markSelection();
}

// A group too large to draw, as a table of its nodes.
function listedGroup(tab, stage, key) {
  const members = stage.nodes.filter(n => keyOf(pathOf(tab, n)).startsWith(key));
  const body = el("tbody", {});
  for (const node of members) {
    body.append(el("tr", { class: "kernel", "data-node": node.id, "data-label": node.label || "",
      onclick: () => selectNode(tab, node.id) },
      el("td", { class: "num" }, "%" + node.id), el("td", {}, node.op), el("td", {}, node.label || ""),
      el("td", {}, node.shape), el("td", {}, list(node.kernels.map(k => "kernel " + k)))));
  }
  return el("div", {},
    el("h3", { style: "margin-top:12px" }, `${key}: ${plural(members.length, "node")}, too many to draw at once`),
    el("table", {}, el("thead", {}, el("tr", {}, ["node", "op", "name", "shape", "kernel"].map(h => el("th", {}, h)))), body));
}

// ---------------------------------------------------------------------------------------------
// Selection and the details panel

function selectNode(tab, id) {
  state.selected = { kind: "node", tab, id };
  const stage = stageData(tab);
  const node = stage.byId.get(id);
  highlight(node.line !== null ? [node.line] : []);
  markSelection();
  showNodeDetails(tab, stage, node);
}

function selectGroup(tab, name, members) {
  state.selected = { kind: "group", tab, name };
  highlight(groupLines(name, members));
  if (isKernel(name)) showKernelDetails(Number(name.slice(7)));
  else {
    const details = document.getElementById("details");
    details.replaceChildren(el("h3", {}, name), el("dl", {},
      el("dt", {}, "ops"), el("dd", {}, members.length),
      el("dt", {}, "source"), el("dd", {}, lineLinks(groupLines(name, members)))));
  }
}

function markSelection() {
  for (const s of document.querySelectorAll("#view .selected")) s.classList.remove("selected");
  const sel = state.selected;
  if (!sel) return;
  let target = null;
  if (sel.kind === "node" && sel.tab === state.tab) target = document.querySelector(`#view [data-node="${sel.id}"]`);
  if (sel.kind === "kernel" && state.tab === "kernels") target = document.querySelector(`tr[data-kernel-row="${sel.index}"]`);
  if (target) {
    target.classList.add("selected");
    target.scrollIntoView({ block: "center", inline: "center" });
  }
}

function lineLinks(lines) {
  if (!lines || !lines.length) return "–";
  return lines.map((l, i) => [i ? ", " : "",
    el("button", { class: "linkish", onclick: () => highlight([l]) }, "line " + l)]);
}

function nodeLink(tab, id) {
  const stage = stageData(tab);
  const node = stage.byId.get(id);
  const text = "%" + id + (node && node.label ? " (" + node.label + ")" : "");
  return el("button", { class: "linkish", "data-goto-node": id, onclick: () => reveal(tab, id) }, text);
}

function kernelLink(k) {
  const kernel = MODEL.kernels[k];
  return el("button", { class: "linkish", "data-kernel": k, onclick: () => { showTab("kernels"); selectKernel(k); } },
    "kernel " + k + ": " + kernel.title);
}

function list(items) {
  if (!items.length) return "–";
  return items.map((item, i) => [i ? ", " : "", item]);
}

function showNodeDetails(tab, stage, node) {
  const rows = [
    ["op", node.op],
    ["name", node.label || "–"],
    ["built-in", node.builtin || "–"],
    ["shape", node.shape],
    ["layer", node.group],
    ["source", lineLinks(node.line !== null ? [node.line] : [])],
  ];
  if (node.grad_of) {
    const of = stage.nodes.find(n => n.label === node.grad_of);
    rows.push(["gradient of", of ? nodeLink(tab, of.id) : node.grad_of]);
  }
  const gradient = stage.nodes.find(n => n.grad_of && node.label && n.grad_of === node.label);
  if (gradient) rows.push(["its gradient", nodeLink(tab, gradient.id)]);
  rows.push(["rewritten by", node.rewrites.length ? node.rewrites.join(", ") : "no rule (as autodiff and the optimizer wrote it)"]);
  if (tab === "simplified" || tab === "fused") {
    const viewed = viewedValue(stage, node);
    if (viewed !== node) {
      rows.push(["computed in", list(viewed.kernels.map(kernelLink))]);
      rows.push(["", ["a view (", node.op.split(" ")[0], ") of ", nodeLink(tab, viewed.id), ", which that kernel computes"]]);
    } else {
      rows.push(["computed in", node.kernels.length ? list(node.kernels.map(kernelLink)) : "no kernel: an input, a parameter or a constant"]);
    }
    if (node.inlined.length) rows.push(["recomputed in", list(node.inlined.map(kernelLink))]);
  } else if (node.label) {
    const after = stageData("simplified").nodes.find(n => n.label === node.label);
    rows.push(["after fusion", after && after.kernels.length ? list(after.kernels.map(kernelLink)) : "–"]);
  }
  rows.push(["operands", list(node.operands.map(o => nodeLink(tab, o)))]);
  rows.push(["users", list((stage.users.get(node.id) || []).map(u => nodeLink(tab, u)))]);
  const details = document.getElementById("details");
  details.replaceChildren(
    el("h3", {}, "%" + node.id + " " + node.op.split(" ")[0] + (node.label ? " · " + node.label : "")),
    el("p", { class: "hint" }, tabTitle(tab) + " stage"),
    el("dl", {}, rows.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])));
}

// The value a reshape shows (a reshape is the same buffer, so no kernel computes it itself).
function viewedValue(stage, node) {
  let value = node;
  while (!value.kernels.length && !value.inlined.length && value.op.startsWith("reshape") && value.operands.length) {
    value = stage.byId.get(value.operands[0]);
  }
  return value.kernels.length ? value : node;
}

// Opens the groups holding a node (or lists the one too large to draw), draws the tab again,
// and selects the node.
function reveal(tab, id) {
  const node = stageData(tab).byId.get(id);
  const path = pathOf(tab, node);
  state.listed = null;
  for (let i = 0; i < path.length; i++) if (!openGroup(tab, keyOf(path.slice(0, i + 1)))) break;
  if (state.tab !== tab) showTab(tab); else rerender();
  selectNode(tab, id);
}

// ---------------------------------------------------------------------------------------------
// Kernels tab

function renderKernels(view) {
  const total = MODEL.kernels.reduce((s, k) => s + (k.seconds || 0), 0);
  const timed = MODEL.profiled_steps !== null;
  view.append(el("h2", {}, "Kernels"),
    el("p", { class: "about" }, "Every kernel of the train step in the order it runs: what it computes, its work per step, the source lines it came from, and its Cranelift IR and machine code. " +
      (timed ? `Times are means over ${MODEL.profiled_steps} steps on synthetic data, each kernel timed on its own (${MODEL.threads} threads).`
        : "Run `nabla inspect FILE --profile` for each kernel's measured time.")));
  const head = el("tr", {}, el("th", { class: "num" }, "#"), el("th", {}, "kernel"),
    timed ? el("th", { class: "num" }, "time") : null, timed ? el("th", { class: "num" }, "share") : null,
    el("th", { class: "num" }, "FLOP"), el("th", { class: "num" }, "bytes"), el("th", {}, "lines"));
  const body = el("tbody", {});
  for (const k of MODEL.kernels) {
    const row = el("tr", { class: "kernel", "data-kernel-row": k.index, onclick: () => selectKernel(k.index) },
      el("td", { class: "num" }, k.index), el("td", {}, k.title),
      timed ? el("td", { class: "num" }, ms(k.seconds)) : null,
      timed ? el("td", { class: "num" }, total ? (100 * k.seconds / total).toFixed(1) + "%" : "–") : null,
      el("td", { class: "num" }, si(k.flops, "")), el("td", { class: "num" }, bytes(k.bytes)),
      el("td", {}, k.lines.join(", ")));
    body.append(row);
  }
  view.append(el("table", {}, el("thead", {}, head), body));
  markSelection();
}

function listing(title, text) {
  const box = el("details", {}, el("summary", {}, title));
  box.addEventListener("toggle", () => {
    if (box.open && !box.querySelector("pre")) box.append(el("pre", {}, text));
  });
  return box;
}

function selectKernel(k) {
  state.selected = { kind: "kernel", index: k };
  const kernel = MODEL.kernels[k];
  highlight(kernel.lines);
  markSelection();
  showKernelDetails(k);
}

function showKernelDetails(k) {
  const kernel = MODEL.kernels[k];
  const rows = [
    ["kind", kernel.kind || "copies results and updates"],
    ["computes", list(kernel.nodes.map(id => nodeLink("fused", id)))],
    ["recomputes", list(kernel.inlined.map(id => nodeLink("fused", id)))],
    ["names", kernel.labels.length ? kernel.labels.join(", ") : "–"],
    ["source", lineLinks(kernel.lines)],
    ["FLOP per step", si(kernel.flops, "")],
    ["bytes per step", bytes(kernel.bytes)],
  ];
  if (kernel.seconds !== null) rows.push(["time per step", ms(kernel.seconds)]);
  document.getElementById("details").replaceChildren(
    el("h3", { "data-kernel-title": k }, "kernel " + k + ": " + kernel.title),
    el("dl", {}, rows.map(([a, b]) => [el("dt", {}, a), el("dd", {}, b)])),
    listing("Cranelift IR", kernel.clif),
    listing("machine code", kernel.asm));
}

// ---------------------------------------------------------------------------------------------
// Passes tab: what each stage did

function renderPasses(view) {
  const stage = key => stageData(key).counts;
  const c = MODEL.compile_ms;
  const rows = [
    ["forward", "the model, lowered", stage("forward"), null],
    ["gradients", "autodiff and the optimizer", stage("gradients"), c.autodiff],
    ["simplified", "e-graph rewrites, batched products", stage("simplified"), c.simplify],
    ["fused", "fusion, lowering, memory plan", MODEL.fused, c.fuse_schedule],
    ["code", "Cranelift code generation", null, c.codegen],
  ];
  const body = el("tbody", {});
  for (const [name, what, counts, time] of rows) {
    body.append(el("tr", {}, el("td", {}, name), el("td", {}, what),
      el("td", { class: "num" }, counts ? counts.ops : ""),
      el("td", { class: "num" }, counts ? counts.kernels : ""),
      el("td", { class: "num" }, counts ? si(counts.flops, "") : ""),
      el("td", { class: "num" }, counts ? bytes(counts.bytes) : ""),
      el("td", { class: "num" }, time !== null ? time.toFixed(1) : "")));
  }
  const fired = MODEL.rules.fired;
  view.append(el("h2", {}, "Passes"),
    el("p", { class: "about" }, "Counts of the train step after each stage at batch " + MODEL.batch +
      ". Before fusion, kernels, FLOPs and bytes are those of every op as its own kernel; after, of the kernels that run."),
    el("table", {}, el("thead", {}, el("tr", {}, ["stage", "what", "ops", "kernels", "FLOP", "bytes moved", "ms"]
      .map((h, i) => el("th", { class: i > 1 ? "num" : "" }, h)))), body),
    el("h2", { style: "margin-top:14px" }, "Rules fired"),
    el("p", {}, fired.length ? fired.map(f => f.rule + " × " + f.times).join(", ") : "none",
      " (e-graph stopped: " + MODEL.rules.stop_reason + ")"),
    el("p", { class: "hint" }, "Nodes a rule rewrote have a dashed border; their details name the rules."));
}

// ---------------------------------------------------------------------------------------------
// Training tab: a log's curves

const COLOURS = { loss: "#2563eb", val_loss: "#dc2626", test_loss: "#059669",
  accuracy: "#2563eb", val_accuracy: "#dc2626", test_accuracy: "#059669", lr: "#7c3aed" };

function renderTraining(view) {
  const log = DATA.log;
  const panels = [
    ["loss", log.series.filter(s => s.key.endsWith("loss"))],
    ["accuracy", log.series.filter(s => s.key.endsWith("accuracy"))],
    ["learning rate", log.lr.length ? [{ key: "lr", points: log.lr }] : []],
  ].filter(([, series]) => series.length);
  const lastEpoch = Math.max(0, ...log.series.flatMap(s => s.points.map(p => p[0])));
  view.append(el("h2", {}, "Training: " + log.file),
    el("div", { class: "toolbar" },
      el("span", {}, "scale"),
      el("button", { "aria-pressed": String(state.scale === "linear"), onclick: () => { state.scale = "linear"; rerender(); } }, "linear"),
      el("button", { "aria-pressed": String(state.scale === "log"), onclick: () => { state.scale = "log"; rerender(); } }, "log"),
      log.best_epoch !== null
        ? el("span", { class: "hint" }, `early stopping: best epoch ${log.best_epoch} (dashed), last epoch ${lastEpoch}`)
        : ""),
    log.left_out ? el("p", { class: "hint" }, "left out: " + log.left_out) : "");
  for (const [title, series] of panels) view.append(chart(title, series, log.best_epoch));
  if (!panels.length) view.append(el("p", {}, "The log has no epochs to draw yet."));
}

function chart(title, series, best) {
  const W = 640, H = 220, L = 56, R = 12, T = 20, B = 30;
  const points = series.flatMap(s => s.points);
  const log = state.scale === "log" && points.every(p => p[1] > 0);
  const f = v => (log ? Math.log10(v) : v);
  const xs = points.map(p => p[0]), ys = points.map(p => f(p[1]));
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { const pad = Math.abs(y0) / 2 || 1; y0 -= pad; y1 += pad; }
  const px = x => L + (x - x0) / (x1 - x0) * (W - L - R);
  const py = y => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const root = svgEl("svg", { width: W, height: H, class: "chart", role: "img", "aria-label": title });
  root.append(svgEl("text", { x: L, y: 13 }, title + (log ? " (log scale)" : "")));
  for (let i = 0; i <= 4; i++) {
    const y = y0 + (y1 - y0) * i / 4;
    root.append(svgEl("line", { class: "grid", x1: L, x2: W - R, y1: py(y), y2: py(y) }));
    const label = log ? Number(Math.pow(10, y).toPrecision(3)) : Number(y.toPrecision(3));
    root.append(svgEl("text", { x: 4, y: py(y) + 4, class: "muted" }, label));
  }
  for (let i = 0; i <= 5; i++) {
    const x = x0 + (x1 - x0) * i / 5;
    root.append(svgEl("text", { x: px(x) - 8, y: H - 10, class: "muted" }, Math.round(x)));
  }
  root.append(svgEl("text", { x: 4, y: H - 10, class: "muted" }, "epoch"));
  if (best !== null && best >= x0 && best <= x1) {
    root.append(svgEl("line", { class: "best", x1: px(best), x2: px(best), y1: T, y2: H - B }));
    root.append(svgEl("text", { x: px(best) + 4, y: T + 10 }, "best " + best));
  }
  for (const s of series) {
    const d = s.points.map((p, i) => (i ? "L" : "M") + px(p[0]).toFixed(1) + "," + py(f(p[1])).toFixed(1)).join(" ");
    root.append(svgEl("path", { class: "series", d, stroke: COLOURS[s.key] || "#444" }));
  }
  const legend = el("div", { class: "legend" }, series.map(s =>
    el("span", {}, el("i", { style: "background:" + (COLOURS[s.key] || "#444") }), s.key)));
  return el("div", {}, root, legend);
}

// ---------------------------------------------------------------------------------------------
// Tabs and search

function tabTitle(tab) {
  return { forward: "Forward", gradients: "Gradients", simplified: "Simplified", fused: "Fused",
    kernels: "Kernels", passes: "Passes", training: "Training" }[tab];
}

function tabs() {
  const list = [...GRAPH_TABS];
  if (MODEL) list.push("kernels", "passes");
  if (DATA.log) list.push("training");
  return list;
}

function showTab(tab) {
  state.tab = tab;
  for (const b of document.querySelectorAll("#tabs button")) b.setAttribute("aria-selected", String(b.dataset.tab === tab));
  rerender();
}

function rerender() {
  const view = document.getElementById("view");
  view.replaceChildren();
  const tab = state.tab;
  if (GRAPH_TABS.includes(tab)) renderGraph(tab, view);
  else if (tab === "kernels") renderKernels(view);
  else if (tab === "passes") renderPasses(view);
  else if (tab === "training") renderTraining(view);
}

function search(query) {
  query = query.trim();
  if (!query || !GRAPH_TABS.includes(state.tab)) return;
  const stage = stageData(state.tab);
  const exact = stage.nodes.filter(n => n.label === query);
  if (exact.length) { reveal(state.tab, exact[0].id); return; }
  const q = query.toLowerCase();
  const found = stage.nodes.filter(n => (n.label || "").toLowerCase().includes(q) || n.op.toLowerCase().includes(q)).slice(0, 60);
  document.getElementById("details").replaceChildren(
    el("h3", {}, found.length ? `${found.length} nodes match “${query}”` : `no node matches “${query}”`),
    el("p", {}, list(found.map(n => nodeLink(state.tab, n.id)))));
}

function start() {
  document.getElementById("title").textContent = "nabla inspect: " + (MODEL ? MODEL.name : DATA.log.file);
  document.title = "nabla inspect: " + (MODEL ? MODEL.name : DATA.log.file);
  renderSource();
  const nav = document.getElementById("tabs");
  for (const tab of tabs()) nav.append(el("button", { "data-tab": tab, onclick: () => showTab(tab) }, tabTitle(tab)));
  const input = document.getElementById("search");
  input.hidden = !MODEL;
  input.addEventListener("keydown", e => { if (e.key === "Enter") search(input.value); });
  showTab(MODEL ? "fused" : "training");
  document.body.dataset.ready = "true";
  document.body.dataset.renderMs = (performance.now() - started).toFixed(0);
}

start();
